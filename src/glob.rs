//! Tensor-name globs for `include` / `exclude` / `overrides`: `*` matches any run of characters
//! (dots included), `?` one character; everything else literally.

/// Whether `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative wildcard match with single backtrack point: O(|p|·|n|) worst case.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether `name` matches any of `patterns`.
pub fn any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("fc3.weight", "fc3.weight"));
        assert!(matches("embeddings.*", "embeddings.word.weight"));
        assert!(matches("*.weight", "layer.0.fc.weight"));
        assert!(matches("fc?.weight", "fc1.weight"));
        assert!(!matches("fc?.weight", "fc10.weight"));
        assert!(!matches("*.bias", "fc1.weight"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "a_x_b_y_c"));
        assert!(!matches("a*b*c", "a_x_b_y"));
    }
}
