//! Helpers shared by the unit tests.

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
