//! Destination names as metric labels, bounded.

/// Most destinations named in metric labels: every server in a room this
/// server holds is a destination, and strangers can add servers to public
/// rooms, so the label set must not grow with them. Past it, counters go
/// under `destination="other"` and gauges are not published (the admin CLI,
/// `myelin admin federation`, still lists every destination).
pub const LABELLED_DESTINATIONS: usize = 256;

/// `name` if it is, or now becomes, one of the [`LABELLED_DESTINATIONS`].
pub(super) fn gauge_label(name: &str) -> Option<String> {
    static NAMED: std::sync::OnceLock<parking_lot::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    let mut named = NAMED.get_or_init(Default::default).lock();
    if named.contains(name) {
        return Some(name.to_owned());
    }
    if named.len() >= LABELLED_DESTINATIONS {
        return None;
    }
    named.insert(name.to_owned());
    Some(name.to_owned())
}

/// `name`, or `"other"` past the [`LABELLED_DESTINATIONS`].
pub(super) fn counter_label(name: &str) -> String {
    gauge_label(name).unwrap_or_else(|| "other".to_owned())
}

#[cfg(test)]
mod label_tests {
    use super::{LABELLED_DESTINATIONS, counter_label, gauge_label};

    #[test]
    fn destination_labels_stop_growing_at_their_bound() {
        // Other tests of this process may have named destinations already.
        let names: Vec<String> = (0..LABELLED_DESTINATIONS * 2).map(|i| format!("label{i}.test")).collect();
        let labelled = names.iter().filter(|n| gauge_label(n).is_some()).count();
        assert!(labelled <= LABELLED_DESTINATIONS, "{labelled}");
        assert!(labelled > 0);
        assert_eq!(counter_label(&names[names.len() - 1]), "other");
        // One named before keeps its label.
        let first = names.iter().find(|n| gauge_label(n).is_some()).unwrap();
        assert_eq!(counter_label(first), *first);
    }
}
