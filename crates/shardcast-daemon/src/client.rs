//! The inference server as the daemon sees it: one lazily connected
//! channel, one `ForecastShardType` call per shard type and round, every
//! answer checked before the planner sees it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardcast_core::{QuantileForecast, Timestamp};
use shardcast_proto::forecast::v1::{
    ForecastShardTypeRequest, forecast_service_client::ForecastServiceClient,
};
use shardcast_proto::forecast_from_pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{PlanConfig, ShardTypeConfig};
use crate::error::{Error, Result};

/// Where a forecast came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The model's name.
    pub model: String,
    /// The model version that produced it.
    pub version: u32,
    /// Series left out because their data ends earlier.
    pub stale_series: usize,
    /// Time of the last observed bin.
    pub last_observed: Timestamp,
}

/// A checked forecast of one shard type's total demand.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The forecast.
    pub forecast: QuantileForecast,
    /// Where it came from.
    pub provenance: Provenance,
}

/// A client of the inference server's forecast service.
#[derive(Debug, Clone)]
pub struct ForecastClient {
    client: ForecastServiceClient<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl ForecastClient {
    /// A client of the configured server that connects on first use and
    /// reconnects after a failure; every call waits at most `timeout_ms`.
    /// An `https://` server is reached over TLS, trusting `tls_ca`.
    pub fn new(cfg: &PlanConfig) -> Result<Self> {
        let uri = cfg.server.as_str();
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let bad = |detail: String| Error::Server {
            uri: uri.to_owned(),
            detail,
        };
        let mut endpoint = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        if uri.starts_with("https://") {
            let Some(ca) = &cfg.tls_ca else {
                return Err(bad(
                    "an https:// server needs tls_ca, the PEM file of the CA that signed it".into(),
                ));
            };
            let pem = std::fs::read(ca).map_err(|source| Error::Io {
                path: ca.clone(),
                source,
            })?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some(domain) = &cfg.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        let token = cfg.token.as_deref();
        let token = token
            .map(|t| {
                let mut v: tonic::metadata::MetadataValue<_> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| bad("the token is not printable ASCII".into()))?;
                v.set_sensitive(true);
                Ok::<_, Error>(v)
            })
            .transpose()?;
        Ok(Self {
            client: ForecastServiceClient::new(endpoint.connect_lazy()),
            token,
            timeout,
        })
    }

    /// The summed demand forecast of one shard type, or why there is none
    /// (in words, for the decision's reason).
    pub async fn shard_type(&self, t: &ShardTypeConfig) -> Result<Fetched, String> {
        let mut request = tonic::Request::new(ForecastShardTypeRequest {
            app: t.app.clone(),
            shard_type: t.shard_type.clone(),
            metric: t.metric.clone().unwrap_or_default(),
            horizon: 0,
            quantiles: Vec::new(),
            per_series: false,
        });
        request.set_timeout(self.timeout);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        let mut client = self.client.clone();
        let call = client.forecast_shard_type(request);
        // The endpoint's timeout covers the call once connected; this one
        // also covers a server that accepts the connection and then stalls.
        let response = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                return Err(format!(
                    "the server did not answer within {} ms",
                    self.timeout.as_millis()
                ));
            }
            Ok(Err(status)) => return Err(describe(&status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let total = response
            .total
            .ok_or_else(|| "the server's answer has no total forecast".to_owned())?;
        let forecast = forecast_from_pb(&total)
            .map_err(|e| format!("the server's forecast is unusable: {e}"))?;
        if total.last_observed_unix_ms.saturating_add(total.step_ms) != forecast.start().millis() {
            return Err(format!(
                "the server's forecast starts at {} but its last observation is at {}",
                forecast.start(),
                Timestamp(total.last_observed_unix_ms)
            ));
        }
        Ok(Fetched {
            provenance: Provenance {
                model: total.model,
                version: total.model_version,
                stale_series: response.stale.len(),
                last_observed: Timestamp(total.last_observed_unix_ms),
            },
            forecast,
        })
    }
}

/// A gRPC status in words: code and message, or the transport's error.
fn describe(status: &tonic::Status) -> String {
    let mut s = format!("{:?}", status.code());
    if !status.message().is_empty() {
        s.push_str(": ");
        s.push_str(status.message());
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        // Transport errors repeat their sources' text; say each part once.
        let part = e.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        source = e.source();
    }
    s
}
