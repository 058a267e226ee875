//! Proactive content negotiation (RFC 9110 §12): `Accept` and `Accept-Encoding` lists with q-values.

/// The q-value of each element of a comma-separated preference list; elements with a malformed q are dropped.
fn preferences(header: &str) -> impl Iterator<Item = (&str, f32)> {
    header.split(',').filter_map(|element| {
        let mut parts = element.split(';');
        let range = parts.next()?.trim();
        if range.is_empty() {
            return None;
        }
        let mut q = 1.0;
        for param in parts {
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                q = value.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))?;
            }
        }
        Some((range, q))
    })
}

/// The q-value the most specific matching element gives `offer`; `matches` returns that specificity.
pub(crate) fn quality(header: &str, offer: &str, matches: fn(&str, &str) -> Option<u8>) -> Option<f32> {
    preferences(header)
        .filter_map(|(range, q)| matches(range, offer).map(|specificity| (specificity, q)))
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, q)| q)
}

/// The index of the acceptable offer with the highest q; ties go to the earlier offer.
pub(crate) fn best<'a>(
    header: &str,
    offers: impl Iterator<Item = &'a str>,
    matches: fn(&str, &str) -> Option<u8>,
) -> Option<usize> {
    let mut winner: Option<(usize, f32, u8)> = None;
    for (i, offer) in offers.enumerate() {
        let Some((specificity, q)) = preferences(header)
            .filter_map(|(range, q)| matches(range, offer).map(|s| (s, q)))
            .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        else {
            continue;
        };
        let better = match winner {
            None => true,
            Some((_, best_q, best_specificity)) => q > best_q || (q == best_q && specificity > best_specificity),
        };
        if q > 0.0 && better {
            winner = Some((i, q, specificity));
        }
    }
    winner.map(|(i, _, _)| i)
}

/// Whether media range `range` (`*/*`, `text/*`, `text/csv`, parameters ignored) covers `offer`; more specific
/// ranges score higher.
pub(crate) fn media_range_matches(range: &str, offer: &str) -> Option<u8> {
    let (range_type, range_subtype) = range.split_once('/')?;
    let (offer_type, offer_subtype) = offer.split_once('/')?;
    let (range_type, range_subtype) = (range_type.trim(), range_subtype.trim());
    if range_type == "*" && range_subtype == "*" {
        Some(0)
    } else if !range_type.eq_ignore_ascii_case(offer_type) {
        None
    } else if range_subtype == "*" {
        Some(1)
    } else {
        range_subtype.eq_ignore_ascii_case(offer_subtype).then_some(2)
    }
}

/// Whether content coding `range` (`*`, `gzip`, `x-gzip`, …) covers `offer`.
pub(crate) fn coding_matches(range: &str, offer: &str) -> Option<u8> {
    if range == "*" {
        Some(0)
    } else if range.eq_ignore_ascii_case(offer) || (offer == "gzip" && range.eq_ignore_ascii_case("x-gzip")) {
        Some(1)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_range_decides() {
        let header = "text/*;q=0.3, text/csv;q=0.7, */*;q=0.1";
        assert_eq!(quality(header, "text/csv", media_range_matches), Some(0.7));
        assert_eq!(quality(header, "text/plain", media_range_matches), Some(0.3));
        assert_eq!(quality(header, "application/x-ndjson", media_range_matches), Some(0.1));
    }

    #[test]
    fn malformed_q_values_drop_only_their_element() {
        assert_eq!(quality("gzip;q=abc, br", "gzip", coding_matches), None);
        assert_eq!(quality("gzip;q=2", "gzip", coding_matches), None);
        assert_eq!(quality("gzip;q=abc, br", "br", coding_matches), Some(1.0));
    }

    #[test]
    fn best_skips_refused_offers_and_breaks_ties_by_order() {
        assert_eq!(
            best("br, gzip", ["zstd", "gzip", "br"].into_iter(), coding_matches),
            Some(1)
        );
        assert_eq!(best("*, gzip;q=0", ["gzip", "br"].into_iter(), coding_matches), Some(1));
        assert_eq!(best("gzip;q=0", ["gzip"].into_iter(), coding_matches), None);
    }
}
