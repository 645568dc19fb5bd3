//! Where ranks run: hostfiles, `--host` lists, Slurm allocations, and placement.
//!
//! Users bring hostfiles written for other launchers, so each line's format is
//! detected on its own: a bare host (document 000's machine file), Open MPI's
//! `host slots=N max_slots=M`, or MPICH's `host:N`. `#` starts a comment; blank lines
//! are skipped. A malformed line is an error naming the file, the line number and the
//! offending text, because "invalid hostfile" alone sends the user hunting.
//!
//! A host listed twice is one host with the slots added up (Open MPI and Hydra agree
//! on that), so it gets one bootstrap, never two.

use std::fmt;
use std::path::Path;

/// One host and how many ranks it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSlots {
    /// The name used to reach it (given to the launch agent) and shown to the user.
    pub name: String,
    /// Ranks it takes before it counts as full.
    pub slots: u32,
    /// Hard limit even with `--oversubscribe` (Open MPI's `max_slots`), if given.
    pub max_slots: Option<u32>,
}

/// A hostfile or host-list problem, with enough context to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A line that is none of the accepted formats.
    #[error("{file}:{line}: cannot parse '{text}': {why}")]
    BadLine {
        /// The hostfile (or `--host`) it came from.
        file: String,
        /// 1-based line (or list item) number.
        line: usize,
        /// The line as written.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// The hostfile could not be read.
    #[error("cannot read hostfile {file}: {reason}")]
    Unreadable {
        /// The path.
        file: String,
        /// The OS error.
        reason: String,
    },
    /// No host at all.
    #[error("{0}: no hosts")]
    Empty(String),
    /// More ranks than slots without `--oversubscribe`, or past a `max_slots`.
    #[error("{0}")]
    TooManyRanks(String),
    /// Slurm's environment does not parse.
    #[error("cannot parse {var}='{value}': {why}")]
    Slurm {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
}

/// Parses a hostfile's text; `file` names it in errors.
pub fn parse_hostfile(file: &str, text: &str) -> Result<Vec<HostSlots>, HostError> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let host = parse_line(content).map_err(|why| HostError::BadLine {
            file: file.to_string(),
            line: i + 1,
            text: raw.trim().to_string(),
            why,
        })?;
        merge(&mut hosts, host);
    }
    if hosts.is_empty() {
        return Err(HostError::Empty(file.to_string()));
    }
    Ok(hosts)
}

/// Reads and parses a hostfile.
pub fn read_hostfile(path: &Path) -> Result<Vec<HostSlots>, HostError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| HostError::Unreadable {
        file: shown.clone(),
        reason: e.to_string(),
    })?;
    parse_hostfile(&shown, &text)
}

/// Parses `--host a,b:2,c` (MPICH and Open MPI spelling: `name[:slots]`).
pub fn parse_host_list(list: &str) -> Result<Vec<HostSlots>, HostError> {
    let mut hosts = Vec::new();
    for (i, item) in list.split(',').enumerate() {
        let host = parse_colon(item.trim()).map_err(|why| HostError::BadLine {
            file: "--host".into(),
            line: i + 1,
            text: item.to_string(),
            why,
        })?;
        merge(&mut hosts, host);
    }
    Ok(hosts)
}

/// Adds `host` to `hosts`, summing slots if it is already there.
fn merge(hosts: &mut Vec<HostSlots>, host: HostSlots) {
    match hosts.iter_mut().find(|h| h.name == host.name) {
        Some(h) => {
            h.slots = h.slots.saturating_add(host.slots);
            h.max_slots = match (h.max_slots, host.max_slots) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                // One entry without a limit lifts it for the host.
                _ => None,
            };
        }
        None => hosts.push(host),
    }
}

/// One non-empty, comment-free hostfile line.
fn parse_line(content: &str) -> Result<HostSlots, String> {
    let mut words = content.split_whitespace();
    let first = words.next().ok_or("empty line")?;
    let rest: Vec<&str> = words.collect();
    if rest.is_empty() {
        // Bare `host` or MPICH `host:N`.
        return parse_colon(first);
    }
    // Open MPI: `host slots=N max_slots=M` (also `slots:N`, which it accepts too).
    check_name(first)?;
    let mut host = HostSlots {
        name: first.to_string(),
        slots: 1,
        max_slots: None,
    };
    for word in rest {
        let (key, value) = word
            .split_once('=')
            .or_else(|| word.split_once(':'))
            .ok_or_else(|| format!("expected key=value, found '{word}'"))?;
        let n = parse_count(value, key)?;
        match key {
            "slots" | "cpu" | "count" => host.slots = n,
            "max_slots" | "max-slots" => host.max_slots = Some(n),
            _ => return Err(format!("unknown key '{key}'")),
        }
    }
    if let Some(max) = host.max_slots {
        if max < host.slots {
            return Err(format!("max_slots={max} is less than slots={}", host.slots));
        }
    }
    Ok(host)
}

/// `host` or `host:N`.
fn parse_colon(item: &str) -> Result<HostSlots, String> {
    let (name, slots) = match item.rsplit_once(':') {
        // An IPv6 address has several colons; take it as a bare host.
        Some((name, n)) if !name.contains(':') => (name, parse_count(n, "slot count")?),
        _ => (item, 1),
    };
    check_name(name)?;
    Ok(HostSlots {
        name: name.to_string(),
        slots,
        max_slots: None,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".into());
    }
    // The name goes to ssh as one argument: refuse what would read as an ssh option
    // or could not be a host name at all.
    if name.starts_with('-') {
        return Err("a host name cannot start with '-'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-_:[]@".contains(*c)))
    {
        return Err(format!("unexpected character '{c}' in host name"));
    }
    Ok(())
}

fn parse_count(value: &str, what: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} must be a positive integer, not '{value}'")),
    }
}

/// How ranks are spread over hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MapBy {
    /// Fill each host's slots before moving to the next (Open MPI's default).
    #[default]
    Slot,
    /// One rank per host in turn, round-robin.
    Node,
}

impl fmt::Display for MapBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapBy::Slot => "slot",
            MapBy::Node => "node",
        })
    }
}

/// Places `np` ranks on `hosts`: the world ranks each host runs, in host order.
///
/// Ranks on one host are consecutive with `--map-by slot`, strided with `--map-by
/// node`. Beyond the total slots is an error unless `oversubscribe`, and then the
/// extra ranks go round-robin over hosts that are not at their `max_slots`.
pub fn place(
    hosts: &[HostSlots],
    np: u32,
    map_by: MapBy,
    oversubscribe: bool,
) -> Result<Vec<Vec<u32>>, HostError> {
    let total: u64 = hosts.iter().map(|h| u64::from(h.slots)).sum();
    if hosts.is_empty() {
        return Err(HostError::Empty("host list".into()));
    }
    if u64::from(np) > total && !oversubscribe {
        return Err(HostError::TooManyRanks(format!(
            "{np} ranks requested but the hosts have {total} slots (add hosts or slots, or pass --oversubscribe)"
        )));
    }
    let cap = |h: &HostSlots| h.max_slots.unwrap_or(u32::MAX);
    let mut count = vec![0u32; hosts.len()];
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); hosts.len()];
    let mut rank = 0u32;
    match map_by {
        MapBy::Slot => {
            for (i, h) in hosts.iter().enumerate() {
                while rank < np && count[i] < h.slots {
                    count[i] += 1;
                    rank += 1;
                }
            }
        }
        MapBy::Node => {
            while rank < np && count.iter().zip(hosts).any(|(&c, h)| c < h.slots) {
                for (i, h) in hosts.iter().enumerate() {
                    if rank < np && count[i] < h.slots {
                        count[i] += 1;
                        rank += 1;
                    }
                }
            }
        }
    }
    // Oversubscription: round-robin over hosts below their hard limit.
    while rank < np {
        let before = rank;
        for (i, h) in hosts.iter().enumerate() {
            if rank < np && count[i] < cap(h) {
                count[i] += 1;
                rank += 1;
            }
        }
        if rank == before {
            return Err(HostError::TooManyRanks(format!(
                "{np} ranks requested but the hosts' max_slots allow only {rank}"
            )));
        }
    }
    // Hand out world ranks: consecutive blocks per host for slot mapping (so a host's
    // ranks are neighbours), round-robin for node mapping.
    match map_by {
        MapBy::Slot => {
            let mut next = 0;
            for (i, c) in count.iter().enumerate() {
                out[i] = (next..next + c).collect();
                next += c;
            }
        }
        MapBy::Node => {
            let mut left = count.clone();
            let mut next = 0;
            while next < np {
                for (i, l) in left.iter_mut().enumerate() {
                    if *l > 0 && next < np {
                        out[i].push(next);
                        *l -= 1;
                        next += 1;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Expands a Slurm node list such as `node[01-04,07],gpu3,rack[1-2]-n[1-2]`.
///
/// Ranges keep their zero padding (`[08-10]` gives `08 09 10`). Several bracket
/// groups in one name multiply out, as `scontrol show hostnames` does.
pub fn expand_slurm_nodelist(list: &str) -> Result<Vec<String>, HostError> {
    let bad = |why: &str| HostError::Slurm {
        var: "SLURM_JOB_NODELIST",
        value: list.to_string(),
        why: why.to_string(),
    };
    // Split at top-level commas (commas inside brackets separate ranges).
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad("unbalanced or nested brackets"));
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced brackets"));
    }
    items.push(&list[start..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        let mut names = vec![String::new()];
        let mut rest = item;
        while let Some(open) = rest.find('[') {
            let close = rest[open..].find(']').ok_or_else(|| bad("missing ']'"))? + open;
            let prefix = &rest[..open];
            let mut alternatives = Vec::new();
            for range in rest[open + 1..close].split(',') {
                alternatives.extend(expand_range(range).ok_or_else(|| bad("bad range"))?);
            }
            names = names
                .iter()
                .flat_map(|n| alternatives.iter().map(move |a| format!("{n}{prefix}{a}")))
                .collect();
            rest = &rest[close + 1..];
        }
        out.extend(names.into_iter().map(|n| n + rest));
    }
    if out.is_empty() {
        return Err(bad("no nodes"));
    }
    Ok(out)
}

/// `07` → `["07"]`, `01-03` → `["01","02","03"]` (width of the lower bound kept).
fn expand_range(range: &str) -> Option<Vec<String>> {
    let range = range.trim();
    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
    let width = lo.len();
    let (a, b): (u64, u64) = (lo.parse().ok()?, hi.parse().ok()?);
    if a > b || b - a > 100_000 {
        return None;
    }
    Some((a..=b).map(|n| format!("{n:0width$}")).collect())
}

/// Expands `SLURM_TASKS_PER_NODE` (`2(x3),1`) into one count per node.
pub fn expand_slurm_tasks(spec: &str) -> Result<Vec<u32>, HostError> {
    let bad = |why: &str| HostError::Slurm {
        var: "SLURM_TASKS_PER_NODE",
        value: spec.to_string(),
        why: why.to_string(),
    };
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let (n, times) = match item.split_once("(x") {
            Some((n, t)) => {
                let t = t.strip_suffix(')').ok_or_else(|| bad("missing ')'"))?;
                (n, t.parse::<u32>().map_err(|_| bad("bad repeat count"))?)
            }
            None => (item, 1),
        };
        let n: u32 = n.parse().map_err(|_| bad("bad task count"))?;
        out.extend(std::iter::repeat_n(n, times as usize));
    }
    Ok(out)
}

/// The hosts of the Slurm allocation this process runs in, if it runs in one.
///
/// `lookup` reads an environment variable (a parameter so tests need not touch the
/// process environment). Slots come from `SLURM_TASKS_PER_NODE`, or 1 per node.
pub fn slurm_hosts(
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<Result<Vec<HostSlots>, HostError>> {
    let list = lookup("SLURM_JOB_NODELIST").or_else(|| lookup("SLURM_NODELIST"))?;
    Some((|| {
        let names = expand_slurm_nodelist(&list)?;
        let tasks = match lookup("SLURM_TASKS_PER_NODE") {
            Some(t) => expand_slurm_tasks(&t)?,
            None => vec![1; names.len()],
        };
        if tasks.len() != names.len() {
            return Err(HostError::Slurm {
                var: "SLURM_TASKS_PER_NODE",
                value: lookup("SLURM_TASKS_PER_NODE").unwrap_or_default(),
                why: format!("{} counts for {} nodes", tasks.len(), names.len()),
            });
        }
        Ok(names
            .into_iter()
            .zip(tasks)
            .map(|(name, slots)| HostSlots {
                name,
                slots: slots.max(1),
                max_slots: None,
            })
            .collect())
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, slots: u32, max: Option<u32>) -> HostSlots {
        HostSlots {
            name: name.into(),
            slots,
            max_slots: max,
        }
    }

    #[test]
    fn every_format_per_line() {
        let text = "# cluster\n\nalpha\nbeta slots=4 max_slots=6   # big one\ngamma:2\n  delta  \n";
        assert_eq!(
            parse_hostfile("hf", text).expect("parses"),
            [
                h("alpha", 1, None),
                h("beta", 4, Some(6)),
                h("gamma", 2, None),
                h("delta", 1, None)
            ]
        );
    }

    #[test]
    fn repeated_hosts_add_up() {
        let hosts = parse_hostfile("hf", "a\na:3\nb slots=2\n").expect("parses");
        assert_eq!(hosts, [h("a", 4, None), h("b", 2, None)]);
    }

    #[test]
    fn malformed_lines_name_file_line_and_text() {
        for (text, line, needle) in [
            ("ok\nbad slots=x\n", 2, "slots"),
            ("a:0\n", 1, "positive"),
            ("a b\n", 1, "key=value"),
            ("a foo=3\n", 1, "unknown key"),
            ("\n\n-oProxyCommand=x\n", 3, "start with '-'"),
            ("a slots=4 max_slots=2\n", 1, "less than"),
            ("h$st\n", 1, "character"),
        ] {
            let err = parse_hostfile("my.hosts", text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("my.hosts:{line}: ")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            let bad_text = text.lines().nth(line - 1).expect("line");
            assert!(msg.contains(bad_text.trim()), "{msg}");
        }
        assert_eq!(
            parse_hostfile("e", "# nothing\n\n"),
            Err(HostError::Empty("e".into()))
        );
    }

    #[test]
    fn host_lists() {
        assert_eq!(
            parse_host_list("a,b:2,a").expect("parses"),
            [h("a", 2, None), h("b", 2, None)]
        );
        assert!(parse_host_list("a,,b").is_err());
        assert_eq!(parse_host_list("::1").expect("v6")[0].name, "::1");
    }

    #[test]
    fn placement_by_slot_and_by_node() {
        let hosts = [h("a", 2, None), h("b", 1, None), h("c", 3, None)];
        assert_eq!(
            place(&hosts, 5, MapBy::Slot, false).expect("fits"),
            [vec![0, 1], vec![2], vec![3, 4]]
        );
        assert_eq!(
            place(&hosts, 5, MapBy::Node, false).expect("fits"),
            [vec![0, 3], vec![1], vec![2, 4]]
        );
        assert_eq!(
            place(&hosts, 1, MapBy::Slot, false).expect("fits"),
            [vec![0], vec![], vec![]]
        );
    }

    #[test]
    fn oversubscription() {
        let hosts = [h("a", 1, None), h("b", 1, Some(2))];
        let err = place(&hosts, 3, MapBy::Slot, false).expect_err("too many");
        assert!(err.to_string().contains("--oversubscribe"), "{err}");
        assert_eq!(
            place(&hosts, 5, MapBy::Slot, true).expect("oversubscribed"),
            [vec![0, 1, 2], vec![3, 4]]
        );
        let capped = [h("a", 1, Some(1)), h("b", 1, Some(2))];
        assert!(place(&capped, 4, MapBy::Slot, true).is_err());
        assert_eq!(
            place(&capped, 3, MapBy::Node, true).expect("fits the caps"),
            [vec![0], vec![1, 2]]
        );
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(
            expand_slurm_nodelist("node[01-04,07]").expect("parses"),
            ["node01", "node02", "node03", "node04", "node07"]
        );
        assert_eq!(
            expand_slurm_nodelist("a1,b[8-10],c").expect("parses"),
            ["a1", "b8", "b9", "b10", "c"]
        );
        assert_eq!(
            expand_slurm_nodelist("r[1-2]-n[08-09]").expect("parses"),
            ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]
        );
        for bad in ["node[1-", "node[3-1]", "node[a]", "x]y["] {
            assert!(expand_slurm_nodelist(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slurm_tasks_per_node() {
        assert_eq!(expand_slurm_tasks("2(x3),1").expect("parses"), [2, 2, 2, 1]);
        assert_eq!(expand_slurm_tasks("4").expect("parses"), [4]);
        assert!(expand_slurm_tasks("2(x3").is_err());
        assert!(expand_slurm_tasks("x").is_err());
    }

    #[test]
    fn slurm_environment() {
        let env = |k: &str| match k {
            "SLURM_JOB_NODELIST" => Some("n[1-3]".to_string()),
            "SLURM_TASKS_PER_NODE" => Some("2(x2),1".to_string()),
            _ => None,
        };
        let hosts = slurm_hosts(env).expect("in an allocation").expect("parses");
        assert_eq!(
            hosts,
            [h("n1", 2, None), h("n2", 2, None), h("n3", 1, None)]
        );
        assert!(slurm_hosts(|_| None).is_none());
        let mismatch = |k: &str| match k {
            "SLURM_JOB_NODELIST" => Some("n[1-3]".to_string()),
            "SLURM_TASKS_PER_NODE" => Some("2".to_string()),
            _ => None,
        };
        assert!(matches!(slurm_hosts(mismatch), Some(Err(_))));
    }
}
