//! `ambit-echo-client ADDR [MESSAGE] [--http] [--loop SECONDS] [--timeout SECONDS]`
//!
//! Connects to ADDR (host:port), sends MESSAGE (default "ping") and prints the reply. With
//! `--http`, sends `GET /MESSAGE` instead. With `--loop`, repeats once a second until SECONDS
//! have passed (a traffic source for demos); exits non-zero if the last attempt failed.

use anyhow::{Context, Result, bail};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut addr = None;
    let mut message = None;
    let mut http = false;
    let mut repeat: Option<u64> = None;
    let mut timeout = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--http" => http = true,
            "--loop" => repeat = Some(args.next().context("--loop needs SECONDS")?.parse()?),
            "--timeout" => timeout = args.next().context("--timeout needs SECONDS")?.parse()?,
            _ if addr.is_none() => addr = Some(a),
            _ if message.is_none() => message = Some(a),
            _ => bail!("unexpected argument {a:?}"),
        }
    }
    let addr = addr.context("usage: ambit-echo-client ADDR [MESSAGE] [--http] [--loop SECONDS]")?;
    let message = message.unwrap_or_else(|| "ping".into());
    let payload = if http {
        format!("GET /{message} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: ambit-echo-client\r\n\r\n")
    } else {
        format!("{message}\n")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(repeat.unwrap_or(0));
    loop {
        let result = ambit_samples::exchange(&addr, &payload, Duration::from_secs(timeout)).await;
        match &result {
            Ok(reply) => print!("{reply}"),
            Err(e) => eprintln!("ambit-echo-client: {addr}: {e}"),
        }
        if repeat.is_none() || tokio::time::Instant::now() >= deadline {
            result?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
