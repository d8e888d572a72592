//! `run --rounds N` measures the rows N times and ends with their medians, each round's ratios
//! taken against that round's own bare-pingora row.

use std::process::Command;

#[test]
fn rounds_end_with_a_table_of_medians() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-proxy-loadtest"))
        .args(["run", "--only", "direct,bare-pingora", "--rounds", "2"])
        .args([
            "--requests",
            "300",
            "--concurrency",
            "2",
            "--duration-limit",
            "60s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let round_one = stdout.find("## Round 1 of 2").expect("round 1");
    let round_two = stdout.find("## Round 2 of 2").expect("round 2");
    let medians = stdout.find("## Medians of 2 rounds").expect("medians");
    assert!(round_one < round_two && round_two < medians, "{stdout}");
    // Each round measured both rows.
    assert_eq!(
        stdout.matches("| bare-pingora | 300 | 0 |").count(),
        2,
        "{stdout}"
    );
    let table = &stdout[medians..];
    let bare = table
        .lines()
        .find(|l| l.starts_with("| bare-pingora |"))
        .expect("bare-pingora's medians");
    let cells: Vec<&str> = bare.split('|').map(str::trim).collect();
    // | path | rounds | req/s | p99 | CPU | req/s ÷ bare | p99 ÷ bare | CPU ÷ bare | each round |
    assert_eq!(cells[2], "2", "{bare}");
    assert!(cells[5].parse::<f64>().unwrap() > 0.0, "{bare}");
    assert_eq!(
        (cells[6], cells[7], cells[8], cells[9]),
        ("1.00", "1.00", "1.00", "1.00, 1.00"),
        "{bare}"
    );
    let direct = table
        .lines()
        .find(|l| l.starts_with("| direct |"))
        .expect("direct's medians");
    let cells: Vec<&str> = direct.split('|').map(str::trim).collect();
    // No proxy process: no CPU, so no CPU ratio.
    assert_eq!((cells[2], cells[5], cells[8]), ("2", "-", "-"), "{direct}");
}

#[test]
fn zero_rounds_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-proxy-loadtest"))
        .args(["run", "--only", "direct", "--rounds", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rounds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
