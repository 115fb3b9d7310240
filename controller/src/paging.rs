//! Pages of a sorted list (`ListHosts`, the dashboard's host pages): an
//! answer that grows with the fleet passes a client's answer limit (4 MiB
//! in tonic, about 7,000 hosts) and takes a browser seconds to draw.
//!
//! A page token is the sort key of the page's last item, so a page is
//! "the items after this key": an item added or removed between two pages
//! moves no other item to another page (an offset would skip or repeat
//! one). Pure: the caller reads and sorts, this cuts.

/// One page, and where the next begins.
#[derive(Debug, PartialEq)]
pub struct Page<T> {
    /// The page's items, in list order.
    pub items: Vec<T>,
    /// The key to ask for the next page with; empty when this page is the last.
    pub next: String,
    /// How many items came before the page (those up to the token).
    pub before: usize,
}

/// How big a page may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Items; 0 means every item after the token, in one page.
    pub items: usize,
    /// Bytes of items, by the caller's measure; a page holds at least one
    /// item, however large, so that paging always moves on.
    pub bytes: usize,
}

/// The items of `sorted` (ascending by `key`) whose key is after `token`
/// (every item when `token` is empty), cut at `limits`.
pub fn page<T>(
    sorted: Vec<T>,
    key: impl Fn(&T) -> String,
    size: impl Fn(&T) -> usize,
    token: &str,
    limits: Limits,
) -> Page<T> {
    let mut before = 0;
    let mut rest = sorted.into_iter().skip_while(|t| {
        let skip = !token.is_empty() && key(t).as_str() <= token;
        before += usize::from(skip);
        skip
    });
    let mut items = Vec::new();
    let mut bytes = 0;
    for t in rest.by_ref() {
        bytes += size(&t);
        items.push(t);
        if limits.items != 0 && (items.len() >= limits.items || bytes >= limits.bytes) {
            break;
        }
    }
    let next = match (rest.next(), items.last()) {
        (Some(_), Some(last)) => key(last),
        _ => String::new(),
    };
    drop(rest); // it counted `before`
    Page { items, next, before }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn cut(list: &[&str], token: &str, items: usize, bytes: usize) -> Page<String> {
        page(words(list), |s| s.clone(), |s| s.len(), token, Limits { items, bytes })
    }

    #[test]
    fn pages_walk_the_list_once_each_item() {
        let all = ["a", "b", "c", "d", "e"];
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let p = cut(&all, &token, 2, 1000);
            assert!(p.items.len() <= 2);
            seen.extend(p.items);
            pages += 1;
            if p.next.is_empty() {
                break;
            }
            token = p.next;
        }
        assert_eq!(seen, words(&all));
        assert_eq!(pages, 3);
    }

    #[test]
    fn the_last_full_page_says_there_is_no_next() {
        let p = cut(&["a", "b"], "", 2, 1000);
        assert_eq!(p.items, words(&["a", "b"]));
        assert_eq!(p.next, "", "nothing follows b, so no empty page is asked for");
    }

    #[test]
    fn size_zero_is_everything_after_the_token() {
        assert_eq!(cut(&["a", "b", "c"], "", 0, 1).items, words(&["a", "b", "c"]));
        let p = cut(&["a", "b", "c"], "a", 0, 1);
        assert_eq!((p.items, p.next), (words(&["b", "c"]), String::new()));
    }

    #[test]
    fn a_page_ends_at_its_byte_limit_but_holds_one_item_at_least() {
        let p = cut(&["aaaa", "bbbb", "cc"], "", 10, 3);
        assert_eq!((p.items, p.next.as_str()), (words(&["aaaa"]), "aaaa"));
        let p = cut(&["aaaa", "bbbb", "cc"], "aaaa", 10, 6);
        assert_eq!((p.items, p.next.as_str()), (words(&["bbbb", "cc"]), ""));
    }

    #[test]
    fn items_added_or_removed_between_pages_move_no_other_item() {
        let p = cut(&["b", "d", "f", "h"], "", 2, 1000);
        assert_eq!(p.next, "d");
        // "c" enrolled before the token, "e" after it; "f" removed.
        let p = cut(&["b", "c", "d", "e", "h"], &p.next, 2, 1000);
        assert_eq!(p.items, words(&["e", "h"]));
        assert_eq!(p.before, 3, "b, c and d came before");
        // A token whose item is gone still positions the next page.
        let p = cut(&["b", "e", "h"], "d", 2, 1000);
        assert_eq!(p.items, words(&["e", "h"]));
    }
}
