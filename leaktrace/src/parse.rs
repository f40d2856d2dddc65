//! Sizes, durations, percents and process ids as people write them, on the command line and in
//! the agent's config file: one reading of each, and one message for what does not parse.

use std::time::Duration;

/// A size with an optional `KiB`/`MiB`/`GiB` suffix, of any magnitude.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (digits, unit) = lower.split_at(
        lower
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(lower.len()),
    );
    let unit: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}` is not a size (write 64KiB, 1MiB or 4096)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|d| d.checked_mul(unit))
        .ok_or_else(|| format!("`{s}` is not a size (write 64KiB, 1MiB or 4096)"))
}

/// A byte count: plain, or with a `KiB`/`MiB` (or `k`/`m`) suffix; 1 byte to 128 MiB.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n == 0 || n > 128 << 20 {
        return Err(format!("`{s}` is out of range: use 1 byte to 128MiB"));
    }
    Ok(n)
}

/// A share of one CPU, in percent: above 0, at most 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("`{s}` is not a percentage between 0 and 100")),
    }
}

/// A process id: a positive integer.
pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!("`{s}` is not a process id (a positive integer)")),
    }
}

/// A duration such as `30s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write it like 30s, 5m or 1h"))?;
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(d)
}

/// A sampling interval: a duration of 10 ms or more.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("`{s}` is too short an interval: use 10ms or more"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_interval("1ms").is_err());
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_bytes("1m"), Ok(1 << 20));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1GiB").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid("42"), Ok(42));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-1").is_err());
        assert!(parse_pid("abc").is_err());
    }
}
