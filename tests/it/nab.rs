//! Every NAB AWS CloudWatch file through the store, and the grid of each
//! compared with the protocol's (pandas) grid in `data/fixtures/nab_grid.csv`.

use shardcast_core::{GridStep, Timestamp};
use shardcast_store::Store;
use shardcast_store::ingest::{MetricMapping, ReadSettings, expand_inputs, parse_metric_files};
use shardcast_store::query::SeriesFilter;
use shardcast_store::resample::{Agg, GapFill, resample};

use super::{repo, shared_data};

struct Expected {
    series: String,
    grid: String,
    raw_rows: usize,
    bins: usize,
    first: String,
    sum: f64,
    samples: Vec<(usize, f64)>,
}

fn fixture() -> Vec<Expected> {
    let text = std::fs::read_to_string(repo().join("data/fixtures/nab_grid.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Expected {
                series: f[0].into(),
                grid: f[1].into(),
                raw_rows: f[2].parse().unwrap(),
                bins: f[3].parse().unwrap(),
                first: f[4].into(),
                sum: f[5].parse().unwrap(),
                samples: f[6]
                    .split(' ')
                    .map(|s| {
                        let (i, v) = s.split_once(':').unwrap();
                        (i.parse().unwrap(), v.parse().unwrap())
                    })
                    .collect(),
            }
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_nab_aws_file_ingests_and_grids_like_the_protocol() {
    let Some(data) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let pattern = data
        .join("nab/realAWSCloudwatch/*.csv")
        .to_string_lossy()
        .into_owned();
    let paths = expand_inputs(&[pattern]).unwrap();
    assert_eq!(paths.len(), 17);
    let mapping = MetricMapping::new("aws", "cloudwatch", &["value"]);
    let (batch, report) = parse_metric_files(&paths, &mapping, &ReadSettings::default()).unwrap();
    let written = store.write_points(batch).await.unwrap();
    // Re-ingesting the same files changes nothing.
    let (batch, _) = parse_metric_files(&paths, &mapping, &ReadSettings::default()).unwrap();
    let again = store.write_points(batch).await.unwrap();
    assert_eq!(again.replaced, written.rows);

    let expected = fixture();
    let series = store.load_series(&SeriesFilter::default()).await.unwrap();
    assert_eq!(series.len(), 17);
    for s in &series {
        let file = report
            .files
            .iter()
            .find(|f| f.path.file_stem().unwrap() == s.key.series.as_str())
            .unwrap();
        let raw_lines = std::fs::read_to_string(&file.path).unwrap().lines().count() - 1;
        assert_eq!(s.ts.len(), raw_lines, "{}: stored rows", s.key.series);
        let five = resample(
            &s.ts,
            &s.value,
            GridStep::FIVE_MINUTES,
            Agg::Mean,
            GapFill::Linear,
        )
        .unwrap();
        let hourly = five.coarsen(GridStep::HOUR, Agg::Mean).unwrap();
        for (name, grid) in [("5m", &five), ("1h", &hourly)] {
            let e = expected
                .iter()
                .find(|e| e.series == s.key.series && e.grid == name)
                .unwrap();
            assert_eq!(e.raw_rows, s.ts.len());
            assert_eq!(grid.values.len(), e.bins, "{} {name}: bins", e.series);
            assert_eq!(
                Timestamp(grid.start.millis()).to_string(),
                e.first,
                "{} {name}",
                e.series
            );
            let sum: f64 = grid.values.iter().sum();
            assert!(
                close(sum, e.sum),
                "{} {name}: sum {sum} vs {}",
                e.series,
                e.sum
            );
            for &(i, v) in &e.samples {
                assert!(
                    close(grid.values[i], v),
                    "{} {name}[{i}]: {} vs {v}",
                    e.series,
                    grid.values[i]
                );
            }
        }
    }
}
