//! Pulls of Prometheus' `/api/v1/query_range` into the store
//! (`shardcast pull`).
//!
//! A range is pulled in pages of at most `max_points` steps per series
//! (Prometheus refuses a range query of more than 11,000 points per
//! series), each page written as one atomic store batch. Evaluation times
//! are whole multiples of the step, so pulling a range again writes the
//! same keys and timestamps and the store's last-write-wins leaves it as
//! it was. With `follow`, the pull keeps going one step at a time; after a
//! restart it resumes from the newest point the store holds of the
//! query's series.
//!
//! Prometheus unreachable, slow or answering 5xx is retried with
//! exponential backoff and reported; nothing is lost, since a page is only
//! written whole. A query Prometheus refuses (bad PromQL: 400 or 422) or a
//! result that is not a range of series is an error naming the query.
//! NaN and infinite values (and native histograms, which the store cannot
//! hold) are skipped and counted, as are series the label rules do not
//! match.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use shardcast_core::{Timestamp, parse_duration};
use shardcast_store::Store;
use shardcast_store::ingest::PointBatch;

use crate::rules::{KeyPart, LabelRules};

/// Most points per series Prometheus answers in one range query.
pub const PROMETHEUS_MAX_POINTS: usize = 11_000;

/// The settings of a pull; as command-line flags, those of `shardcast
/// pull`.
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// Prometheus' base URL, e.g. `http://127.0.0.1:9090` (a path prefix
    /// such as `/prometheus` is kept).
    #[arg(long = "prometheus", env = "SHARDCAST_PROMETHEUS")]
    pub url: String,
    /// The PromQL expression; each series of its result becomes a stored
    /// series.
    #[arg(long)]
    pub query: String,
    /// First time to pull (`2026-11-01`, `2026-11-01T12:00:00Z`, unix ms).
    #[arg(long, conflicts_with = "since")]
    pub start: Option<Timestamp>,
    /// Last time to pull (default: now).
    #[arg(long, conflicts_with = "follow")]
    pub end: Option<Timestamp>,
    /// Pull this far back from the end instead of from --start (`14d`,
    /// `6h`).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Evaluation step: one stored point per step and series (`5m`, `1h`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub step: Duration,
    /// App of every series (or --app-label).
    #[arg(long, conflicts_with = "app_label")]
    pub app: Option<String>,
    /// Label holding the app.
    #[arg(long)]
    pub app_label: Option<String>,
    /// Shard type of every series (or --shard-type-label).
    #[arg(long, conflicts_with = "shard_type_label")]
    pub shard_type: Option<String>,
    /// Label holding the shard type.
    #[arg(long)]
    pub shard_type_label: Option<String>,
    /// Metric of every series (default: the metric name, `__name__`, or
    /// `value` for a result without one, such as a `rate()`).
    #[arg(long, conflicts_with = "metric_label")]
    pub metric: Option<String>,
    /// Label holding the metric.
    #[arg(long)]
    pub metric_label: Option<String>,
    /// Series id of every series (default: the labels not used above, as
    /// `name=value` pairs joined by `,`).
    #[arg(long, conflicts_with = "series_label")]
    pub series: Option<String>,
    /// Label holding the series id.
    #[arg(long)]
    pub series_label: Option<String>,
    /// After the range, keep pulling every step until Ctrl-C or SIGTERM;
    /// a restart resumes from the newest stored point of the query's
    /// series.
    #[arg(long)]
    pub follow: bool,
    /// With --follow, how long after a step's time it is pulled, so that
    /// the scrape of that moment has arrived.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Most steps per series in one query (Prometheus answers at most
    /// 11,000).
    #[arg(long, default_value_t = PROMETHEUS_MAX_POINTS)]
    pub max_points: usize,
    /// Longest wait for one answer of Prometheus.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Attempts per query after the first when Prometheus is unreachable,
    /// slow or answers 5xx (backoff from 0.5 s, doubling, at most 30 s);
    /// with --follow it never gives up.
    #[arg(long, default_value_t = 6)]
    pub retries: u32,
}

impl PullArgs {
    /// The label rules the key flags describe; app and shard type are
    /// required.
    pub fn rules(&self) -> Result<LabelRules, PullError> {
        let part = |value: &Option<String>, label: &Option<String>| match (value, label) {
            (Some(v), _) => Some(KeyPart::Value(v.clone())),
            (None, Some(l)) => Some(KeyPart::Label(l.clone())),
            (None, None) => None,
        };
        let required = |p: Option<KeyPart>, what: &str| {
            p.ok_or_else(|| {
                PullError::Invalid(format!("give --{what} VALUE or --{what}-label LABEL"))
            })
        };
        Ok(LabelRules {
            app: required(part(&self.app, &self.app_label), "app")?,
            shard_type: required(part(&self.shard_type, &self.shard_type_label), "shard-type")?,
            metric: part(&self.metric, &self.metric_label),
            series: part(&self.series, &self.series_label),
            metrics: Vec::new(),
        })
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The settings cannot work.
    #[error("{0}")]
    Invalid(String),
    /// Prometheus refused the query or answered something that is not a
    /// range of series; asking again cannot help.
    #[error("the query `{query}`: {detail}")]
    Query {
        /// The PromQL.
        query: String,
        /// What was wrong.
        detail: String,
    },
    /// Prometheus could not be reached, was too slow or answered 5xx;
    /// asking again may help.
    #[error("Prometheus at {url}: {detail}")]
    Unavailable {
        /// The URL asked.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The store refused a page.
    #[error("the store refused a page")]
    Store(#[from] shardcast_store::Error),
}

impl PullError {
    fn retryable(&self) -> bool {
        matches!(self, PullError::Unavailable { .. })
    }
}

/// What a pull did, and what it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Pages written.
    pub pages: u64,
    /// Distinct series the rules matched.
    pub series: u64,
    /// Points stored.
    pub stored: u64,
    /// Stored points they replaced (same key and timestamp).
    pub replaced: u64,
    /// NaN and infinite values skipped.
    pub non_finite: u64,
    /// Native histogram samples skipped.
    pub histograms: u64,
    /// Samples of series the label rules do not match.
    pub unmatched: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
}

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A follow resumes after the newest stored point.
    Resumed {
        /// The first time it pulls.
        from: Timestamp,
    },
    /// A page was written.
    Page {
        /// Its first evaluation time.
        from: Timestamp,
        /// Its last.
        to: Timestamp,
        /// Series in it.
        series: usize,
        /// Points stored.
        stored: usize,
        /// Points skipped (non-finite, histograms, unmatched).
        skipped: u64,
        /// The store version it made (none when it stored nothing).
        version: Option<u64>,
    },
    /// An attempt failed and is retried after `wait`.
    Retrying {
        /// The failure.
        error: String,
        /// Failed attempts in a row.
        attempt: u32,
        /// The backoff.
        wait: Duration,
    },
}

impl std::fmt::Display for PullReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pulled {} pages: {} series, {} points stored ({} replaced); skipped {} NaN/Inf, \
             {} histogram, {} unmatched; {} retries",
            self.pages,
            self.series,
            self.stored,
            self.replaced,
            self.non_finite,
            self.histograms,
            self.unmatched,
            self.retries
        )
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Resumed { from } => {
                write!(f, "resuming after the stored points, from {from}")
            }
            Progress::Page {
                from,
                to,
                series,
                stored,
                skipped,
                version,
            } => {
                write!(
                    f,
                    "{from} .. {to}: {series} series, {stored} points stored, {skipped} skipped"
                )?;
                match version {
                    Some(v) => write!(f, " (store version {v})"),
                    None => Ok(()),
                }
            }
            Progress::Retrying {
                error,
                attempt,
                wait,
            } => write!(f, "{error}; retry {attempt} in {:.1}s", wait.as_secs_f64()),
        }
    }
}

/// The client side of Prometheus' HTTP API for one query.
#[derive(Debug, Clone)]
struct Api {
    client: reqwest::Client,
    base: reqwest::Url,
    query: String,
    timeout: Duration,
}

/// Prometheus' answer envelope.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// One series of a matrix or vector result.
#[derive(Debug, Deserialize)]
struct ResultSeries {
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
    #[serde(default)]
    histograms: Vec<serde_json::Value>,
}

impl Api {
    fn new(url: &str, query: &str, timeout: Duration) -> Result<Self, PullError> {
        let base = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                PullError::Invalid(format!("--prometheus {url} is not an http(s) URL"))
            })?;
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| PullError::Invalid(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            client,
            base,
            query: query.to_owned(),
            timeout,
        })
    }

    fn url(&self, endpoint: &str, params: &[(&str, String)]) -> reqwest::Url {
        let mut u = self.base.clone();
        if let Ok(mut path) = u.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1", endpoint]);
        }
        u.query_pairs_mut()
            .append_pair("query", &self.query)
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        u
    }

    fn query_err(&self, detail: String) -> PullError {
        PullError::Query {
            query: self.query.clone(),
            detail,
        }
    }

    /// One API call: the result's series when its type is `want`.
    async fn call(
        &self,
        endpoint: &str,
        params: &[(&str, String)],
        want: &str,
    ) -> Result<Vec<ResultSeries>, PullError> {
        let url = self.url(endpoint, params);
        let unavailable = |detail: String| PullError::Unavailable {
            url: url.to_string(),
            detail,
        };
        let resp = self
            .client
            .get(url.clone())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| {
                unavailable(if e.is_timeout() {
                    format!("no answer within {:?}", self.timeout)
                } else {
                    format!("cannot connect ({})", error_chain(&e))
                })
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| unavailable(format!("the answer broke off ({})", error_chain(&e))))?;
        self.decode(url.as_str(), status, &body, want)
    }

    /// An answer's series when the call succeeded and the result is a
    /// `want`; 5xx and 429 are worth retrying, the rest is not.
    fn decode(
        &self,
        url: &str,
        status: reqwest::StatusCode,
        body: &[u8],
        want: &str,
    ) -> Result<Vec<ResultSeries>, PullError> {
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(PullError::Unavailable {
                url: url.to_owned(),
                detail: format!("answered {status}: {}", snippet(body)),
            });
        }
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
            self.query_err(format!(
                "the answer ({status}) is not Prometheus' API JSON ({e}): {}",
                snippet(body)
            ))
        })?;
        if envelope.status != "success" {
            return Err(self.query_err(format!(
                "Prometheus refused it ({status}, {}): {}",
                envelope.error_type.as_deref().unwrap_or("error"),
                envelope.error.as_deref().unwrap_or("no reason given")
            )));
        }
        let data = envelope
            .data
            .ok_or_else(|| self.query_err("the answer holds no data".into()))?;
        if data.result_type != want {
            return Err(self.query_err(format!(
                "the result is a {}, not a {want} of series",
                data.result_type
            )));
        }
        serde_json::from_value(data.result)
            .map_err(|e| self.query_err(format!("the {want} result is malformed: {e}")))
    }

    /// The series of a range query, evaluated at `start`, `start + step`,
    /// …, `end` (milliseconds).
    async fn range(&self, start: i64, end: i64, step: i64) -> Result<Vec<ResultSeries>, PullError> {
        let params = [
            ("start", seconds(start)),
            ("end", seconds(end)),
            ("step", seconds(step)),
            ("timeout", seconds(self.timeout.as_millis() as i64)),
        ];
        self.call("query_range", &params, "matrix").await
    }

    /// The label sets of an instant query at `at`.
    async fn instant(&self, at: i64) -> Result<Vec<ResultSeries>, PullError> {
        self.call("query", &[("time", seconds(at))], "vector").await
    }
}

/// Milliseconds as Prometheus' decimal seconds.
fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// At most 200 bytes of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().replace('\n', " ")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The wall clock.
fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp(ms)
}

/// A pull from one Prometheus query into one store.
struct Puller<'a, P> {
    store: &'a Store,
    api: Api,
    rules: LabelRules,
    step: i64,
    max_points: usize,
    retries: Option<u32>,
    report: PullReport,
    seen: HashSet<String>,
    progress: P,
}

impl<P: FnMut(&Progress)> Puller<'_, P> {
    /// `call` until it succeeds, fails for good or the retries run out.
    async fn retrying<T, F, Fut>(&mut self, mut call: F) -> Result<T, PullError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<T, PullError>>,
    {
        let mut attempt = 0;
        loop {
            match call(self.api.clone()).await {
                Err(e) if e.retryable() && self.retries.is_none_or(|n| attempt < n) => {
                    attempt += 1;
                    let wait = Duration::from_millis(500 << (attempt - 1).min(6))
                        .min(Duration::from_secs(30));
                    tracing::warn!(error = %e, attempt, ?wait, "Prometheus query failed; retrying");
                    (self.progress)(&Progress::Retrying {
                        error: e.to_string(),
                        attempt,
                        wait,
                    });
                    self.report.retries += 1;
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Pulls `[from, to]` (multiples of the step) page by page.
    async fn range(&mut self, from: i64, to: i64) -> Result<(), PullError> {
        let span = (self.max_points as i64 - 1) * self.step;
        let mut start = from;
        while start <= to {
            let end = (start + span).min(to);
            let step = self.step;
            let result = self
                .retrying(|api| async move { api.range(start, end, step).await })
                .await?;
            self.write(start, end, &result).await?;
            start = end + self.step;
        }
        Ok(())
    }

    async fn write(
        &mut self,
        from: i64,
        to: i64,
        result: &[ResultSeries],
    ) -> Result<(), PullError> {
        let mut batch = PointBatch::default();
        let mut skipped = 0;
        for (i, s) in result.iter().enumerate() {
            let labels = s.metric.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            let key = match self.rules.key(labels) {
                None => {
                    self.report.unmatched += (s.values.len() + s.histograms.len()) as u64;
                    skipped += (s.values.len() + s.histograms.len()) as u64;
                    continue;
                }
                Some(Err(e)) => {
                    return Err(self.api.query_err(format!(
                        "result[{i}] {:?} makes no valid series key: {e}",
                        s.metric
                    )));
                }
                Some(Ok(key)) => key,
            };
            self.report.histograms += s.histograms.len() as u64;
            skipped += s.histograms.len() as u64;
            for (j, (t, v)) in s.values.iter().enumerate() {
                let value: f64 = v.parse().map_err(|_| {
                    self.api
                        .query_err(format!("result[{i}].values[{j}]: `{v}` is not a number"))
                })?;
                let ms = (t * 1000.0).round();
                if !(ms.is_finite() && Timestamp::checked(ms as i64).is_some()) {
                    return Err(self.api.query_err(format!(
                        "result[{i}].values[{j}]: {t} s is outside years 1 to 9999"
                    )));
                }
                if value.is_finite() {
                    batch.push(&key, ms as i64, value);
                } else {
                    self.report.non_finite += 1;
                    skipped += 1;
                }
            }
            if self.seen.insert(key.to_string()) {
                self.report.series += 1;
            }
        }
        let stored = batch.len();
        let version = if batch.is_empty() {
            None
        } else {
            let w = self.store.write_points(batch).await?;
            self.report.stored += w.rows;
            self.report.replaced += w.replaced;
            Some(w.version)
        };
        self.report.pages += 1;
        (self.progress)(&Progress::Page {
            from: Timestamp(from),
            to: Timestamp(to),
            series: result.len(),
            stored,
            skipped,
            version,
        });
        Ok(())
    }

    /// After the newest stored point of the series the query returns at
    /// `at`: the first step to pull, if the store holds any of them.
    async fn resume_after(&mut self, at: i64) -> Result<Option<i64>, PullError> {
        let current = self
            .retrying(|api| async move { api.instant(at).await })
            .await?;
        let keys: HashSet<String> = current
            .iter()
            .filter_map(|s| {
                let labels = s.metric.iter().map(|(n, v)| (n.as_str(), v.as_str()));
                self.rules.key(labels)?.ok().map(|k| k.to_string())
            })
            .collect();
        let stored = self.store.list_series().await?;
        Ok(stored
            .iter()
            .filter(|s| keys.contains(&s.key.to_string()))
            .map(|s| s.last)
            .min()
            .map(|last| last.div_euclid(self.step) * self.step + self.step))
    }
}

/// Pulls what `args` ask for into `store`, reporting pages and retries to
/// `progress`. With `follow` it runs until `shutdown` resolves.
pub async fn run(
    store: &Store,
    args: &PullArgs,
    shutdown: impl Future<Output = ()>,
    progress: impl FnMut(&Progress),
) -> Result<PullReport, PullError> {
    let rules = args.rules()?;
    let step = i64::try_from(args.step.as_millis())
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| PullError::Invalid(format!("--step {:?} must be positive", args.step)))?;
    if !(2..=PROMETHEUS_MAX_POINTS).contains(&args.max_points) {
        return Err(PullError::Invalid(format!(
            "--max-points {} must lie between 2 and {PROMETHEUS_MAX_POINTS}",
            args.max_points
        )));
    }
    // A follow pulls each step `delay` after its time, the first range too.
    let delay = if args.follow {
        args.delay.as_millis() as i64
    } else {
        0
    };
    let end = args
        .end
        .unwrap_or_else(|| Timestamp(now().0 - delay))
        .0
        .div_euclid(step)
        * step;
    let start = match (args.start, args.since) {
        (Some(s), _) => s.0,
        (None, Some(since)) => end - since.as_millis() as i64,
        (None, None) => {
            return Err(PullError::Invalid(
                "give --start TIME or --since DURATION".into(),
            ));
        }
    };
    // The first multiple of the step at or after the start.
    let mut from = start.div_euclid(step) * step;
    if from < start {
        from += step;
    }
    let mut p = Puller {
        store,
        api: Api::new(&args.url, &args.query, args.timeout)?,
        rules,
        step,
        max_points: args.max_points,
        retries: (!args.follow).then_some(args.retries),
        report: PullReport::default(),
        seen: HashSet::new(),
        progress,
    };
    if args.follow
        && let Some(after) = p.resume_after(end).await?
        && after > from
    {
        from = after;
        (p.progress)(&Progress::Resumed {
            from: Timestamp(from),
        });
    }
    if from > end && !args.follow {
        return Err(PullError::Invalid(format!(
            "the range from {} to {} holds no step of {:?}",
            Timestamp(start),
            Timestamp(end),
            args.step
        )));
    }
    p.range(from, end).await?;
    if !args.follow {
        return Ok(p.report);
    }
    let mut next = from.max(end + step);
    tokio::pin!(shutdown);
    loop {
        let wait = (next + delay - now().0).max(0) as u64;
        let stop = tokio::select! {
            () = &mut shutdown => true,
            () = tokio::time::sleep(Duration::from_millis(wait)) => false,
        };
        if stop {
            break;
        }
        // A page cut short by the shutdown is not written: the store
        // commits a batch whole or not at all.
        let last = (now().0 - delay).div_euclid(step) * step;
        let stop = tokio::select! {
            () = &mut shutdown => true,
            r = p.range(next, last) => r.map(|()| false)?,
        };
        if stop {
            break;
        }
        next = next.max(last + step);
    }
    Ok(p.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_keep_milliseconds_and_negative_times() {
        assert_eq!(seconds(1_700_000_000_123), "1700000000.123");
        assert_eq!(seconds(300_000), "300.000");
        assert_eq!(seconds(-1), "-1.999");
    }

    #[test]
    fn urls_keep_a_path_prefix_and_escape_the_query() {
        let api = Api::new(
            "http://127.0.0.1:9090/prom/",
            "sum(rate(x{a=\"b\"}[5m]))",
            Duration::from_secs(1),
        )
        .unwrap();
        let u = api.url("query_range", &[("step", "300.000".into())]);
        assert_eq!(u.path(), "/prom/api/v1/query_range");
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        assert_eq!(pairs[0].1, "sum(rate(x{a=\"b\"}[5m]))");
        assert_eq!(pairs[1], ("step".into(), "300.000".into()));
        assert!(Api::new("127.0.0.1:9090", "x", Duration::from_secs(1)).is_err());
        assert!(Api::new("ftp://h/", "x", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn answers_are_decoded_and_refusals_name_the_query() {
        use reqwest::StatusCode;
        let api = Api::new("http://p:9090", "rate(x[5m])", Duration::from_secs(1)).unwrap();
        let ok = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"job":"a"},"values":[[1700000000,"1.5"],[1700000300.5,"NaN"]]}]}}"#;
        let series = api.decode("u", StatusCode::OK, ok, "matrix").unwrap();
        assert_eq!(series[0].metric["job"], "a");
        assert_eq!(series[0].values[1], (1_700_000_300.5, "NaN".to_owned()));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#;
        let e = api
            .decode("u", StatusCode::OK, scalar, "matrix")
            .unwrap_err();
        assert!(!e.retryable());
        assert_eq!(
            e.to_string(),
            "the query `rate(x[5m])`: the result is a scalar, not a matrix of series"
        );
        let refused = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let e = api
            .decode("u", StatusCode::BAD_REQUEST, refused, "matrix")
            .unwrap_err();
        assert!(e.to_string().contains("bad_data): parse error"), "{e}");
        let e = api
            .decode("u", StatusCode::OK, b"<html>proxy</html>", "matrix")
            .unwrap_err();
        assert!(e.to_string().contains("not Prometheus' API JSON"), "{e}");
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            let e = api.decode("u", status, b"busy", "matrix").unwrap_err();
            assert!(e.retryable(), "{e}");
        }
        let bad = br#"{"status":"success","data":{"resultType":"matrix","result":[{"values":1}]}}"#;
        let e = api.decode("u", StatusCode::OK, bad, "matrix").unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }

    #[test]
    fn key_flags_become_rules_and_app_and_shard_type_are_required() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            pull: PullArgs,
        }
        let parse = |extra: &[&str]| {
            let argv = ["pull", "--prometheus", "http://p:9090", "--query", "up"];
            Cli::try_parse_from(argv.iter().chain(extra)).map(|c| c.pull)
        };
        let a = parse(&["--app", "web", "--shard-type-label", "tier"]).unwrap();
        let r = a.rules().unwrap();
        assert_eq!(r.app, KeyPart::Value("web".into()));
        assert_eq!(r.shard_type, KeyPart::Label("tier".into()));
        assert_eq!((r.metric, r.series), (None, None));
        let e = parse(&["--app", "web"]).unwrap().rules().unwrap_err();
        assert!(e.to_string().contains("--shard-type"), "{e}");
        assert!(parse(&["--app", "a", "--app-label", "job"]).is_err());
        assert!(parse(&["--start", "2026-01-01", "--since", "1d"]).is_err());
    }
}
