//! "Did you mean …?": the known names closest to a mistyped one, for error messages (config
//! keys, service tag names).

/// Edit distance (insertions, deletions, substitutions) between `a` and `b`, ignoring ASCII case
/// (Levenshtein, from `strsim`).
pub fn distance(a: &str, b: &str) -> usize {
    strsim::levenshtein(&a.to_ascii_lowercase(), &b.to_ascii_lowercase())
}

/// Up to `limit` candidates close to `word` (at most a third of its length apart, at least 2, or
/// equal ignoring case), closest first; ties keep the candidates' order.
pub fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<&'a str> {
    let bound = (word.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, usize, &str)> = candidates
        .into_iter()
        .enumerate()
        .map(|(order, candidate)| (distance(word, candidate), order, candidate))
        .filter(|(d, _, _)| *d <= bound)
        .collect();
    scored.sort();
    scored.into_iter().take(limit).map(|(_, _, c)| c).collect()
}

/// `; did you mean "x"?` (or `"x" or "y"`) for the closest of `candidates`, or `""`.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(word, candidates, 2).as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean \"{one}\"?"),
        [one, two, ..] => format!("; did you mean \"{one}\" or \"{two}\"?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("interfaces", "interfaces"), 0);
        assert_eq!(distance("intefaces", "interfaces"), 1);
        assert_eq!(distance("Ports", "ports"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggests_the_closest_names() {
        let keys = ["interfaces", "ports", "mode", "metrics"];
        assert_eq!(closest("intefaces", keys, 2), vec!["interfaces"]);
        assert_eq!(closest("port", keys, 2), vec!["ports"]);
        assert!(closest("completely_else", keys, 2).is_empty());
        assert_eq!(did_you_mean("mod", keys), "; did you mean \"mode\"?");
        assert_eq!(did_you_mean("zzzzzz", keys), "");
        assert_eq!(
            did_you_mean(
                "AzureCloud.eastus3",
                ["AzureCloud.eastus", "AzureCloud.eastus2"]
            ),
            "; did you mean \"AzureCloud.eastus\" or \"AzureCloud.eastus2\"?"
        );
    }
}
