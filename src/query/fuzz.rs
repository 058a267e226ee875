//! Property tests over the query-string parser and planner: arbitrary input never panics, and every
//! rejection is a [`ParamError`] (a 400), never anything else.

use proptest::prelude::*;

use super::params::tests::dataset;
use super::*;

/// Names and values biased towards the grammar's own tokens, plus arbitrary text.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("name".to_owned()),
        Just("amount".to_owned()),
        Just("paid".to_owned()),
        Just("select".to_owned()),
        Just("order".to_owned()),
        Just("limit".to_owned()),
        Just("after".to_owned()),
        Just("cursor".to_owned()),
        Just("consistency".to_owned()),
        Just("format".to_owned()),
        Just("compression".to_owned()),
        "[a-z.,()\"\\\\*%_ -]{0,12}",
        "(not\\.)?(eq|neq|gt|gte|lt|lte|like|ilike|in|is)\\.[a-z0-9.,()\"\\\\*]{0,10}",
        "[a-z]{1,6}(\\.(asc|desc|nullsfirst|nullslast)){0,3}(,[a-z]{1,6}){0,2}",
        "([a-z_]{0,4}:)?([a-z]{0,6}\\.)?(count|sum|avg|min|max|x)\\(\\)(,[a-z]{1,6}|,count\\(\\))?",
        "[a-z]{0,6}(\\.(count|sum|avg|min|max)\\(\\))?(\\.(asc|desc)){0,2}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn parsing_and_planning_never_panic(pairs in proptest::collection::vec((token(), token()), 0..6)) {
        let mut dataset = dataset();
        // Summaries too: `amount` has every aggregate, `name` min and max.
        dataset.aggregates = true;
        let numeric = dataset.columns[2].value_type();
        dataset.columns[2].aggregates = crate::dataset::Aggregates {
            sum: Some(numeric.clone()),
            avg: Some(numeric),
            min_max: true,
        };
        dataset.columns[1].aggregates.min_max = true;
        for endpoint in [Endpoint::Rows, Endpoint::Page, Endpoint::Job] {
            match params::parse(&dataset, endpoint, &pairs) {
                Ok(request) => {
                    let plan = match endpoint {
                        Endpoint::Rows => plan_rows(&dataset, &request, Format::Csv, Some(CountMethod::Exact)),
                        Endpoint::Page => plan_page(&dataset, &request, Some(&Position(vec![Some("1".into())])), 10, None),
                        Endpoint::Job if request.summary.is_some() => plan_rows(&dataset, &request, Format::Ndjson, None),
                        Endpoint::Job => KeysetScan::new(&dataset, &request, Format::Ndjson, 100)
                            .batch(Some(&Position(vec![Some("1".into())])), 100, None),
                    };
                    // Every request value reaches SQL only as a numbered parameter.
                    for (name, value) in &pairs {
                        if !value.is_empty() && value.len() > 3 && value.contains('\'') {
                            prop_assert!(!plan.sql.contains(value.as_str()), "{name}={value} leaked into {}", plan.sql);
                        }
                    }
                    let placeholders = plan.sql.matches('$').count();
                    prop_assert!(placeholders >= plan.params.len());
                }
                Err(error) => prop_assert!(!error.parameter.is_empty() || pairs.iter().any(|(n, _)| n.is_empty())),
            }
        }
    }
}
