//! Parsing of the address and CPU lists given on the command line.

use std::net::Ipv4Addr;

/// The most source addresses one run may spread over.
pub const MAX_SOURCE_IPS: usize = 65_536;

/// Parses `--source-ips`: a count `N` (127.0.0.1 ..= 127.0.0.N), or a
/// comma-separated list of addresses and inclusive ranges `A-B`
/// (`127.0.0.1-127.0.0.40`, `127.0.0.1-40` for the same last-octet range).
pub fn parse_source_ips(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty source address list".into());
    }
    if let Ok(n) = spec.parse::<u32>() {
        if n == 0 || n > 254 * 256 {
            return Err(format!(
                "source address count {n}: give 1 to {} (from 127.0.0.1 up)",
                254 * 256
            ));
        }
        let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
        return Ok((0..n).map(|i| Ipv4Addr::from(base + i)).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            None => out.push(parse_ip(part)?),
            Some((a, b)) => {
                let start = parse_ip(a.trim())?;
                let b = b.trim();
                let end = if b.contains('.') {
                    parse_ip(b)?
                } else {
                    let last: u8 = b
                        .parse()
                        .map_err(|_| format!("bad range end {b:?} in {part:?}"))?;
                    let o = start.octets();
                    Ipv4Addr::new(o[0], o[1], o[2], last)
                };
                let (s, e) = (u32::from(start), u32::from(end));
                if e < s {
                    return Err(format!("range {part:?} ends before it starts"));
                }
                if (e - s) as usize >= MAX_SOURCE_IPS {
                    return Err(format!("range {part:?} is larger than {MAX_SOURCE_IPS}"));
                }
                out.extend((s..=e).map(Ipv4Addr::from));
            }
        }
        if out.len() > MAX_SOURCE_IPS {
            return Err(format!("more than {MAX_SOURCE_IPS} source addresses"));
        }
    }
    Ok(out)
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

/// Parses a CPU list as `taskset -c` takes it: `1`, `0,2`, `0-3,6`.
pub fn parse_cpu_list(spec: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad CPU number {s:?} in {spec:?}"))
        };
        match part.split_once('-') {
            None => out.push(num(part)?),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a || b - a > 4096 {
                    return Err(format!("bad CPU range {part:?}"));
                }
                out.extend(a..=b);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("no CPU in {spec:?}"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_starts_at_127_0_0_1() {
        let ips = parse_source_ips("3").unwrap();
        assert_eq!(
            ips,
            vec![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
        let many = parse_source_ips("300").unwrap();
        assert_eq!(many[255], Ipv4Addr::new(127, 0, 1, 0));
        assert!(parse_source_ips("0").is_err());
    }

    #[test]
    fn ranges_and_lists() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.40").unwrap();
        assert_eq!(ips.len(), 40);
        assert_eq!(ips[39], Ipv4Addr::new(127, 0, 0, 40));
        assert_eq!(parse_source_ips("127.0.0.1-40").unwrap(), ips);
        let ips = parse_source_ips("127.0.0.9, 127.0.1.250-127.0.2.1").unwrap();
        assert_eq!(ips.len(), 1 + 8);
        assert_eq!(ips[1], Ipv4Addr::new(127, 0, 1, 250));
        assert_eq!(ips[8], Ipv4Addr::new(127, 0, 2, 1));
    }

    #[test]
    fn bad_source_specs() {
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("127.0.0.40-127.0.0.1").is_err());
        assert!(parse_source_ips("localhost").is_err());
        assert!(parse_source_ips("127.0.0.1-x").is_err());
        assert!(parse_source_ips("10.0.0.0-11.0.0.0").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("3,0-1,1").unwrap(), vec![0, 1, 3]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }
}
