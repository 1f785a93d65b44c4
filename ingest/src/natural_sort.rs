//! Numeric-aware ("natural") ordering of tensor names.
//!
//! Graph-less formats order their layers by tensor name; plain string order would put
//! `features.10.weight` before `features.3.weight`. [`natural_cmp`] compares runs of ASCII
//! digits by their numeric value (without overflow, however long) and everything else
//! byte-wise, so `layer2 < layer10` and `features.3.weight < features.10.weight`.

use std::cmp::Ordering;

/// One run of a name: either ASCII digits or anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk<'a> {
    Digits(&'a str),
    Text(&'a str),
}

fn chunks(s: &str) -> impl Iterator<Item = Chunk<'_>> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digits = first.is_ascii_digit();
        let end = rest
            .char_indices()
            .find(|&(_, c)| c.is_ascii_digit() != digits)
            .map_or(rest.len(), |(i, _)| i);
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(if digits {
            Chunk::Digits(head)
        } else {
            Chunk::Text(head)
        })
    })
}

fn cmp_digits(a: &str, b: &str) -> Ordering {
    let at = a.trim_start_matches('0');
    let bt = b.trim_start_matches('0');
    at.len()
        .cmp(&bt.len())
        .then_with(|| at.cmp(bt))
        // equal value: fewer leading zeros first, so the order stays total
        .then_with(|| a.len().cmp(&b.len()))
}

/// Natural order of two names: digit runs compare by value, the rest byte-wise.
///
/// A digit run sorts before a non-digit run at the same position. The order is total and
/// agrees with `==` (names that compare `Equal` are identical).
///
/// ```
/// use filterdb_ingest::natural_sort::natural_cmp;
/// use std::cmp::Ordering;
/// assert_eq!(natural_cmp("layer2", "layer10"), Ordering::Less);
/// assert_eq!(natural_cmp("features.10.weight", "features.3.weight"), Ordering::Greater);
/// ```
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let mut ia = chunks(a);
    let mut ib = chunks(b);
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x, y) {
                    (Chunk::Digits(x), Chunk::Digits(y)) => cmp_digits(x, y),
                    (Chunk::Text(x), Chunk::Text(y)) => cmp_text(x, y),
                    (Chunk::Digits(_), Chunk::Text(_)) => Ordering::Less,
                    (Chunk::Text(_), Chunk::Digits(_)) => Ordering::Greater,
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

/// Text runs compare byte-wise. Runs are maximal, so the chunk sequence of a name is
/// unique and the lexicographic order over chunks is a total order.
fn cmp_text(a: &str, b: &str) -> Ordering {
    a.cmp(b)
}

/// Sorts names in place in natural order.
pub fn natural_sort<S: AsRef<str>>(names: &mut [S]) {
    names.sort_by(|a, b| natural_cmp(a.as_ref(), b.as_ref()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let mut v = vec![
            "layer10",
            "layer2",
            "features.10.weight",
            "features.3.weight",
            "features.0.weight",
            "layer1",
            "a",
            "layer02",
        ];
        natural_sort(&mut v);
        assert_eq!(
            v,
            vec![
                "a",
                "features.0.weight",
                "features.3.weight",
                "features.10.weight",
                "layer1",
                "layer2",
                "layer02",
                "layer10",
            ]
        );
    }

    #[test]
    fn long_numbers_do_not_overflow() {
        let a = "x99999999999999999999999999999";
        let b = "x100000000000000000000000000000";
        assert_eq!(natural_cmp(a, b), Ordering::Less);
    }

    #[test]
    fn resnet_style_names() {
        let mut v = vec![
            "layer4.1.conv2.weight",
            "layer1.0.conv1.weight",
            "conv1.weight",
            "layer1.10.conv1.weight",
            "layer1.2.conv1.weight",
        ];
        natural_sort(&mut v);
        assert_eq!(
            v,
            vec![
                "conv1.weight",
                "layer1.0.conv1.weight",
                "layer1.2.conv1.weight",
                "layer1.10.conv1.weight",
                "layer4.1.conv2.weight",
            ]
        );
    }

    proptest! {
        #[test]
        fn numbers_sort_by_value(p in "[a-z._]{0,6}", x in 0u64..1_000_000, y in 0u64..1_000_000, s in "[a-z.]{0,6}") {
            let a = format!("{p}{x}{s}");
            let b = format!("{p}{y}{s}");
            prop_assert_eq!(natural_cmp(&a, &b), x.cmp(&y));
        }

        #[test]
        fn antisymmetric_and_consistent_with_eq(a in "[a-c0-9.]{0,8}", b in "[a-c0-9.]{0,8}") {
            let ab = natural_cmp(&a, &b);
            prop_assert_eq!(ab, natural_cmp(&b, &a).reverse());
            prop_assert_eq!(ab == Ordering::Equal, a == b);
        }

        #[test]
        fn transitive(a in "[ab0-9]{0,5}", b in "[ab0-9]{0,5}", c in "[ab0-9]{0,5}") {
            let mut v = [a, b, c];
            natural_sort(&mut v);
            prop_assert_ne!(natural_cmp(&v[0], &v[1]), Ordering::Greater);
            prop_assert_ne!(natural_cmp(&v[1], &v[2]), Ordering::Greater);
            prop_assert_ne!(natural_cmp(&v[0], &v[2]), Ordering::Greater);
        }
    }
}
