//! Helpers shared by the unit tests.

/// Deterministic pseudo-random values in [-1, 1).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The model's view of a training series (its rows, grid and events).
pub(crate) fn input_of<'a>(
    m: &crate::forecaster::Model,
    s: &'a crate::forecaster::TrainSeries,
) -> crate::forecaster::SeriesInput<'a> {
    crate::forecaster::SeriesInput {
        series: m.series_row(&s.name),
        shard_type: m.shard_type_row(&s.shard_type),
        start: s.start,
        step: m.step_ms(),
        values: &s.values,
        events: s.events.as_deref(),
    }
}
