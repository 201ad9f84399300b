use std::path::Path;

use super::*;

fn mapping() -> MetricMapping {
    MetricMapping::new("app", "web", &["value"])
}

fn parse(text: &[u8]) -> Result<(PointBatch, FileReport)> {
    parse_metric_bytes(
        Path::new("dir/ec2_x.csv"),
        text,
        &mapping(),
        &ReadSettings::default(),
    )
}

fn row_error(text: &[u8]) -> (u64, String, RowError) {
    match parse(text) {
        Err(Error::Row {
            path,
            line,
            field,
            reason,
        }) => {
            assert_eq!(path, Path::new("dir/ec2_x.csv"));
            (line, field, reason)
        }
        other => panic!("expected a row error, got {other:?}"),
    }
}

#[test]
fn parses_nab_style_csv() {
    let (b, r) =
        parse(b"timestamp,value\n2014-02-14 14:30:00,0.132\n2014-02-14 14:35:00,0.134\n").unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(r.rows, 2);
    assert_eq!(
        b.keys,
        vec![SeriesKey::new("app", "web", "value", "ec2_x").unwrap()]
    );
    assert_eq!(b.ts[1] - b.ts[0], 300_000);
    assert_eq!(b.value, vec![0.132, 0.134]);
}

#[test]
fn several_value_columns_become_series() {
    let m = MetricMapping::new("azure", "vm", &["min cpu", "avg cpu"]);
    let (b, _) = parse_metric_bytes(
        Path::new("azure.csv"),
        b"timestamp,min cpu,max cpu,avg cpu\r\n2017-01-01 00:00:00,1,9,5\r\n",
        &m,
        &ReadSettings::default(),
    )
    .unwrap();
    let names: Vec<_> = b.keys.iter().map(|k| k.series.as_str()).collect();
    assert_eq!(names, vec!["min_cpu", "avg_cpu"]);
    assert_eq!(b.value, vec![1.0, 5.0]);
}

#[test]
fn keys_from_columns_and_unix_times() {
    let m = MetricMapping {
        timestamp_col: "t".into(),
        timestamp_format: TimestampFormat::Auto,
        value_cols: vec!["v".into()],
        app: KeySource::Column("app".into()),
        shard_type: KeySource::Column("type".into()),
        metric: KeySource::Constant("rps".into()),
        series: KeySource::Column("app".into()),
    };
    let text = b"t,app,type,v\n1700000000,a,x,1\n1700000000000,b,y,2\n1700000001,a,x,3\n";
    let (b, _) =
        parse_metric_bytes(Path::new("f.csv"), text, &m, &ReadSettings::default()).unwrap();
    assert_eq!(b.keys.len(), 2);
    assert_eq!(b.key_idx, vec![0, 1, 0]);
    assert_eq!(
        b.ts,
        vec![1_700_000_000_000, 1_700_000_000_000, 1_700_000_001_000]
    );
    assert_eq!(b.keys[1].series, "b");
}

#[test]
fn quoted_csv_is_parsed() {
    let (b, _) = parse(b"\"timestamp\",\"value\"\n\"2014-02-14 14:30:00\",\"1.5\"\n").unwrap();
    assert_eq!(b.value, vec![1.5]);
}

#[test]
fn ndjson() {
    let m = MetricMapping {
        app: KeySource::Column("app".into()),
        ..mapping()
    };
    let text = b"{\"timestamp\":\"2014-02-14T14:30:00Z\",\"value\":1.5,\"app\":\"a\"}\n\n{\"timestamp\":1392388500,\"value\":\"2\",\"app\":\"a\"}\n";
    let (b, _) =
        parse_metric_bytes(Path::new("x.ndjson"), text, &m, &ReadSettings::default()).unwrap();
    assert_eq!(b.value, vec![1.5, 2.0]);
    let bad = b"{\"timestamp\":\"2014-02-14T14:30:00Z\",\"app\":\"a\"}\n";
    match parse_metric_bytes(Path::new("x.ndjson"), bad, &m, &ReadSettings::default()) {
        Err(Error::Row {
            line: 1,
            field,
            reason: RowError::Missing,
            ..
        }) => assert_eq!(field, "value"),
        other => panic!("{other:?}"),
    }
    match parse_metric_bytes(
        Path::new("x.ndjson"),
        b"{\"timestamp\": 1,\n",
        &m,
        &ReadSettings::default(),
    ) {
        Err(Error::Row {
            line: 1,
            reason: RowError::Malformed { .. },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_timestamp_names_line_and_field() {
    let (line, field, reason) = row_error(b"timestamp,value\n2014-02-14 14:30:00,1\nyesterday,2\n");
    assert_eq!((line, field.as_str()), (3, "timestamp"));
    assert!(matches!(reason, RowError::BadTimestamp { .. }));
    let msg = parse(b"timestamp,value\nyesterday,2\n")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("dir/ec2_x.csv:2") && msg.contains("timestamp") && msg.contains("yesterday"),
        "{msg}"
    );
}

#[test]
fn bad_values() {
    let (line, field, reason) = row_error(b"timestamp,value\n2014-02-14 14:30:00,abc\n");
    assert_eq!((line, field.as_str()), (2, "value"));
    assert!(matches!(reason, RowError::NotANumber { .. }));
    assert!(matches!(
        row_error(b"timestamp,value\n2014-02-14 14:30:00,NaN\n").2,
        RowError::NotFinite { .. }
    ));
    assert!(matches!(
        row_error(b"timestamp,value\n2014-02-14 14:30:00,\n").2,
        RowError::Missing
    ));
}

#[test]
fn structural_errors() {
    assert!(matches!(parse(b""), Err(Error::EmptyFile { .. })));
    assert!(matches!(parse(b"  \n"), Err(Error::EmptyFile { .. })));
    match parse(b"time,value\n2014-02-14 14:30:00,1\n") {
        Err(Error::MissingColumn { column, flag, .. }) => {
            assert_eq!((column.as_str(), flag), ("timestamp", "--timestamp-col"))
        }
        other => panic!("{other:?}"),
    }
    match parse(b"timestamp,value,value\n") {
        Err(e @ Error::Header { .. }) => assert!(e.to_string().contains("twice"), "{e}"),
        other => panic!("{other:?}"),
    }
    let (line, _, reason) = row_error(b"timestamp,value\n2014-02-14 14:30:00,1,7\n");
    assert_eq!(line, 2);
    assert_eq!(
        reason,
        RowError::ColumnCount {
            expected: 2,
            got: 3
        }
    );
    let (line, _, reason) =
        row_error(b"timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:35:00,\xff\n");
    assert_eq!((line, reason), (3, RowError::InvalidUtf8));
    match parse(b"timestamp,va\xfflue\n") {
        Err(Error::Header { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn ten_megabyte_line_is_rejected() {
    let mut text = b"timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:35:00,".to_vec();
    text.extend(std::iter::repeat_n(b'9', 10 << 20));
    text.push(b'\n');
    let (line, field, reason) = row_error(&text);
    assert_eq!((line, field.as_str()), (3, "<line>"));
    assert!(matches!(reason, RowError::LineTooLong { .. }));
}

#[test]
fn line_numbers_are_exact_across_parallel_chunks() {
    let mut text = b"timestamp,value\n".to_vec();
    for i in 0..60_000 {
        text.extend_from_slice(format!("2014-02-14 14:30:00,{i}\n").as_bytes());
    }
    assert!(text.len() > 1 << 20, "large enough to be split");
    let (b, _) = parse(&text).unwrap();
    assert_eq!(b.len(), 60_000);
    assert_eq!(b.value[59_999], 59_999.0);
    text.extend_from_slice(b"2014-02-14 14:30:00,oops\n");
    let (line, _, _) = row_error(&text);
    assert_eq!(line, 60_002);
    // An error early in the file wins over one late in the file.
    text[16..35].copy_from_slice(b"2014-99-14 14:30:00");
    assert_eq!(row_error(&text).0, 2);
}

#[test]
fn skip_invalid_reports_rows() {
    let settings = ReadSettings {
        skip_invalid: true,
        ..Default::default()
    };
    let text = b"timestamp,value\n2014-02-14 14:30:00,1\nbad,2\n2014-02-14 14:40:00,x\n2014-02-14 14:45:00,4\n1,2,3\n";
    let (b, r) = parse_metric_bytes(Path::new("f.csv"), text, &mapping(), &settings).unwrap();
    assert_eq!(b.value, vec![1.0, 4.0]);
    assert_eq!(r.skipped, 3);
    let lines: Vec<u64> = r.skipped_examples.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![3, 4, 6]);
    let shown = ParseReport { files: vec![r] }.to_string();
    assert!(
        shown.starts_with("skipped 3 invalid rows:\n  f.csv: 3 skipped\n"),
        "{shown}"
    );
    assert!(shown.contains("    f.csv:4: field \"value\" "), "{shown}");
    assert_eq!(ParseReport::default().to_string(), "");
}

#[test]
fn events_parse_and_validate() {
    let m = EventMapping {
        start_col: "start".into(),
        end_col: Some("end".into()),
        timestamp_format: TimestampFormat::Auto,
        kind: KeySource::Column("kind".into()),
        scope: KeySource::Constant("*".into()),
        name_col: Some("name".into()),
    };
    let ok = b"start,end,kind,name\n2014-11-27,2014-11-28,holiday,Thanksgiving\n2014-12-01,2014-12-01,batch-job,\n";
    let (ev, _) = parse_event_bytes(Path::new("e.csv"), ok, &m, &ReadSettings::default()).unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].name.as_deref(), Some("Thanksgiving"));
    assert_eq!(ev[1].name, None);
    let bad = b"start,end,kind,name\n2014-11-28,2014-11-27,holiday,x\n";
    match parse_event_bytes(Path::new("e.csv"), bad, &m, &ReadSettings::default()) {
        Err(Error::Row {
            line: 2,
            field,
            reason: RowError::EndBeforeStart,
            ..
        }) => assert_eq!(field, "end"),
        other => panic!("{other:?}"),
    }
    let no_kind = b"start,end,kind,name\n2014-11-27,2014-11-28,,x\n";
    assert!(parse_event_bytes(Path::new("e.csv"), no_kind, &m, &ReadSettings::default()).is_err());
}

#[test]
fn invalid_key_text_is_a_row_error() {
    let m = MetricMapping {
        app: KeySource::Column("app".into()),
        ..mapping()
    };
    let text = b"timestamp,value,app\n2014-02-14 14:30:00,1,\n";
    match parse_metric_bytes(Path::new("f.csv"), text, &m, &ReadSettings::default()) {
        Err(Error::Row {
            line: 2,
            field,
            reason: RowError::Key(_),
            ..
        }) => assert_eq!(field, "app"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn timestamps_outside_years_1_to_9999_are_row_errors_on_every_format() {
    // i64::MAX used to panic in partitioning; i64::MIN and 1e18 used to be
    // stored and then fail every query with a cast error.
    for (format, text) in [
        (TimestampFormat::Auto, "9223372036854775807"),
        (TimestampFormat::Auto, "-9223372036854775808"),
        (TimestampFormat::Auto, "1000000000000000000"),
        (TimestampFormat::Auto, "1e18"),
        (TimestampFormat::UnixMillis, "253402300800000"),
        (TimestampFormat::UnixSeconds, "9223372036854775"),
        (TimestampFormat::UnixSeconds, "92233720368547758070"),
        (TimestampFormat::UnixSeconds, "-62135596801"),
    ] {
        let m = MetricMapping {
            timestamp_format: format,
            ..mapping()
        };
        let body = format!("timestamp,value\n{text},1\n");
        let result = parse_metric_bytes(
            Path::new("t.csv"),
            body.as_bytes(),
            &m,
            &ReadSettings::default(),
        );
        match result {
            Err(Error::Row {
                line: 2,
                field,
                reason: RowError::TimestampOutOfRange { .. },
                ..
            }) => assert_eq!(field, "timestamp"),
            other => panic!("{format:?} {text}: {other:?}"),
        }
    }
    // The ends of the range are accepted.
    let edges = b"timestamp,value\n0001-01-01T00:00:00Z,1\n9999-12-31T23:59:59.999Z,2\n";
    let (b, _) = parse(edges).unwrap();
    assert_eq!(b.ts, vec![Timestamp::MIN.millis(), Timestamp::MAX.millis()]);
    // Events follow the same rule.
    let m = EventMapping {
        start_col: "start".into(),
        end_col: None,
        timestamp_format: TimestampFormat::Auto,
        kind: KeySource::Constant("holiday".into()),
        scope: KeySource::Constant("*".into()),
        name_col: None,
    };
    let bad = b"start\n9223372036854775807\n";
    assert!(matches!(
        parse_event_bytes(Path::new("e.csv"), bad, &m, &ReadSettings::default()),
        Err(Error::Row {
            reason: RowError::TimestampOutOfRange { .. },
            ..
        })
    ));
}

#[test]
fn a_file_that_changes_while_it_is_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.csv");
    let mut body = String::from("timestamp,value\n");
    for i in 0..1000 {
        body.push_str(&format!("{},12\n", 1_392_388_200 + 300 * i));
    }
    std::fs::write(&path, &body).unwrap();
    // Cut at a line boundary and in a value ("12" -> "1"): both would parse.
    for cut in [body.len() / 2, body.rfind(",12").unwrap() + 2] {
        std::fs::write(&path, &body).unwrap();
        let result = read_file_checked(&path, || {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut as u64).unwrap();
        });
        match result {
            Err(Error::FileChanged { path: p, what }) => {
                assert_eq!(p, path);
                assert!(what.contains("bytes"), "{what}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Rewritten with the same size.
    std::fs::write(&path, &body).unwrap();
    let result = read_file_checked(&path, || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, body.replace(",12", ",13")).unwrap();
    });
    assert!(
        matches!(result, Err(Error::FileChanged { .. })),
        "{result:?}"
    );
    // An unchanged file reads whole.
    std::fs::write(&path, &body).unwrap();
    assert_eq!(read_file(&path).unwrap(), body.as_bytes());
}

#[test]
fn expand_inputs_errors() {
    assert!(matches!(
        expand_inputs(&["/nonexistent/*.csv".into()]),
        Err(Error::NoFiles { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    match expand_inputs(std::slice::from_ref(&d)) {
        Err(e @ Error::IsDirectory { .. }) => {
            assert!(e.to_string().contains("is a directory"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        expand_inputs(&["[".into()]),
        Err(Error::BadPattern { .. })
    ));
}

#[test]
fn batch_append_merges_keys() {
    let k1 = SeriesKey::new("a", "b", "c", "d").unwrap();
    let k2 = SeriesKey::new("a", "b", "c", "e").unwrap();
    let mut x = PointBatch::default();
    x.push(&k1, 1, 1.0);
    let mut y = PointBatch::default();
    y.push(&k2, 2, 2.0);
    y.push(&k1, 3, 3.0);
    x.append(y);
    assert_eq!(x.keys.len(), 2);
    assert_eq!(x.key_idx, vec![0, 1, 0]);
}

#[test]
fn batch_partition_keeps_order_on_both_sides() {
    let k1 = SeriesKey::new("a", "b", "c", "d").unwrap();
    let k2 = SeriesKey::new("x", "b", "c", "e").unwrap();
    let mut b = PointBatch::default();
    for (k, ts) in [(&k1, 1), (&k2, 2), (&k1, 5), (&k2, 6), (&k1, 7)] {
        b.push(k, ts, ts as f64 * 10.0);
    }
    let (kept, picked) = b.partition(|k, ts| k.app == "a" && ts >= 5);
    let points = |b: &PointBatch| -> Vec<(String, i64, f64)> {
        b.iter()
            .map(|(k, ts, v)| (k.series.clone(), ts, v))
            .collect()
    };
    assert_eq!(
        points(&kept),
        [
            ("d".into(), 1, 10.0),
            ("e".into(), 2, 20.0),
            ("e".into(), 6, 60.0)
        ]
    );
    assert_eq!(
        points(&picked),
        [("d".into(), 5, 50.0), ("d".into(), 7, 70.0)]
    );
    assert_eq!(picked.keys, [k1]);
}
