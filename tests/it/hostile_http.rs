//! Hostile HTTP against the webhook listener, over raw sockets so each test controls exactly
//! what bytes arrive and when: over-limit bodies (declared and chunked) are refused with `413`
//! from what was read so far, slow headers, idle keep-alives and slow bodies are cut by the
//! timeouts, connections are capped per listener, and valid deliveries are served throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Harness, Options, Tuning, WEBHOOK_SECRET};
use crate::ingress::{approval_body, nothing_stored};

/// `server.max_body_bytes` of the test configuration.
const LIMIT: usize = 65_536;
/// Deadline for anything awaited here: generous, only there so a broken server fails the test
/// instead of hanging it. No assertion depends on how fast something happened.
const WAIT: Duration = Duration::from_secs(30);

/// A daemon with these `[server]` overrides (`JITBRIDGE__SERVER__<KEY>`) and an admin listener
/// of its own.
async fn daemon(server: &[(&'static str, &str)]) -> Harness {
    let mut env: Vec<(&'static str, String)> =
        server.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    env.push(("JITBRIDGE__ADMIN__LISTEN", "127.0.0.1:0".to_owned()));
    Harness::start_tuned(
        Options::default(),
        Tuning {
            env,
            ..Tuning::default()
        },
    )
    .await
}

/// A Jira approval delivery and its signature.
fn signed_approval(key: &str) -> (Vec<u8>, String) {
    let body = approval_body(key);
    let sig = jitbridge_sim::sign::jira_hub_signature(WEBHOOK_SECRET, &body);
    (body, sig)
}

/// The head of a `POST /webhooks/jira` with these extra header lines.
fn post_head(extra: &[String]) -> String {
    let mut head =
        "POST /webhooks/jira HTTP/1.1\r\nHost: jitbridge\r\nContent-Type: application/json\r\n"
            .to_owned();
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// A whole signed delivery as raw bytes (one request, keep-alive).
fn signed_delivery_request(key: &str, id: &str) -> Vec<u8> {
    let (body, sig) = signed_approval(key);
    let mut request = post_head(&[
        format!("Content-Length: {}", body.len()),
        format!("X-Hub-Signature: {sig}"),
        format!("X-Atlassian-Webhook-Identifier: {id}"),
    ])
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// One HTTP answer as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    json: serde_json::Value,
}

/// Reads one answer (status line, headers, `Content-Length` body).
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Answer {
    tokio::time::timeout(WAIT, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read answer");
            assert!(n > 0, "connection closed before an answer: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let status = head[9..12].parse().expect("status code");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed inside the answer body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let json = serde_json::from_slice(&buf[head_end..head_end + length])
            .unwrap_or(serde_json::Value::Null);
        Answer { status, json }
    })
    .await
    .expect("an answer within the deadline")
}

/// Waits until the server closes the connection (end of stream or reset); false if it is still
/// open at the deadline.
async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin)) -> bool {
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Whether the server has already closed `stream`, without waiting: a non-blocking read.
fn already_closed(stream: TcpStream) -> bool {
    let stream = stream.into_std().expect("std socket");
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut &stream, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(h.daemon().webhook_addr)
        .await
        .expect("connect")
}

fn assert_too_large(answer: &Answer) {
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.json["error"], "payload_too_large", "{answer:?}");
    assert!(answer.json["detail"].is_string(), "{answer:?}");
}

#[tokio::test]
async fn declared_over_limit_body_gets_413_from_the_header_alone() {
    let h = daemon(&[("JITBRIDGE__SERVER__REQUEST_TIMEOUT", "5m")]).await;
    let mut stream = connect(&h).await;
    // Headers declare 10 MB; not one body byte follows. Waiting for the body would end in the
    // 5-minute request timeout (408), far past this test's deadline; 413 means the length alone
    // decided.
    let head = post_head(&[
        "Content-Length: 10000000".to_owned(),
        "X-Hub-Signature: sha256=00".to_owned(),
    ]);
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_too_large(&answer);
    assert!(
        closed_by_server(&mut stream).await,
        "the connection stays open after 413"
    );
    nothing_stored(&h).await;
}

#[tokio::test]
async fn chunked_over_limit_body_gets_413_having_read_at_most_one_byte_past_the_limit() {
    let h = daemon(&[("JITBRIDGE__SERVER__REQUEST_TIMEOUT", "5m")]).await;
    let mut stream = connect(&h).await;
    let head = post_head(&["Transfer-Encoding: chunked".to_owned()]);
    stream.write_all(head.as_bytes()).await.unwrap();
    // Exactly LIMIT + 1 body bytes in 8 KiB chunks, then nothing: no final chunk. The server
    // cannot have read more than we sent, and must decide without waiting for the end.
    let mut sent = 0;
    while sent <= LIMIT {
        let n = (8 * 1024).min(LIMIT + 1 - sent);
        let mut chunk = format!("{n:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b' ', n));
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk).await.unwrap();
        sent += n;
    }
    assert_eq!(sent, LIMIT + 1);
    let answer = read_answer(&mut stream).await;
    assert_too_large(&answer);
    assert!(closed_by_server(&mut stream).await);
    nothing_stored(&h).await;
}

#[tokio::test]
async fn sender_streaming_a_huge_chunked_body_reads_413_and_is_cut_off() {
    const HUGE: usize = 64 * 1024 * 1024;
    let h = daemon(&[("JITBRIDGE__SERVER__REQUEST_TIMEOUT", "5m")]).await;
    let stream = connect(&h).await;
    let (mut reader, mut writer) = stream.into_split();
    let head = post_head(&["Transfer-Encoding: chunked".to_owned()]);
    writer.write_all(head.as_bytes()).await.unwrap();
    // The sender keeps pushing 64 MiB regardless of any answer, like a naive client.
    let pushed = tokio::spawn(async move {
        let chunk = {
            let mut c = format!("{:x}\r\n", 16 * 1024).into_bytes();
            c.extend(std::iter::repeat_n(b' ', 16 * 1024));
            c.extend_from_slice(b"\r\n");
            c
        };
        let mut sent = 0;
        while sent < HUGE {
            if writer.write_all(&chunk).await.is_err() {
                return (sent, true);
            }
            sent += 16 * 1024;
        }
        (sent, false)
    });
    let answer = read_answer(&mut reader).await;
    assert_too_large(&answer);
    let (sent, cut) = tokio::time::timeout(WAIT, pushed)
        .await
        .expect("the sender is stopped")
        .unwrap();
    assert!(
        cut && sent < HUGE,
        "the server kept accepting the body: {sent} bytes"
    );
    nothing_stored(&h).await;
}

#[tokio::test]
async fn sender_that_reads_only_after_sending_its_whole_over_limit_body_still_gets_413() {
    let h = daemon(&[]).await;
    let mut stream = connect(&h).await;
    // Head and 512 KiB of chunked body in one go, the way a simple client writes a request,
    // before it looks for an answer. The server answers after 64 KiB with request bytes still
    // unread, where an abrupt close may reset the connection and lose the answer (RFC 9112
    // §9.6); the answer must still reach the client.
    let mut request = post_head(&["Transfer-Encoding: chunked".to_owned()]).into_bytes();
    for _ in 0..32 {
        request.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
        request.extend(std::iter::repeat_n(b' ', 16 * 1024));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // Whether this write completes or is cut does not matter; the answer does.
    let _ = tokio::time::timeout(WAIT, stream.write_all(&request)).await;
    let answer = read_answer(&mut stream).await;
    assert_too_large(&answer);
    nothing_stored(&h).await;
}

#[tokio::test]
async fn slow_body_gets_json_408_from_the_request_timeout() {
    let h = daemon(&[("JITBRIDGE__SERVER__REQUEST_TIMEOUT", "1s")]).await;
    let (body, sig) = signed_approval("ACCESS-950");
    let mut stream = connect(&h).await;
    let head = post_head(&[
        format!("Content-Length: {}", body.len()),
        format!("X-Hub-Signature: {sig}"),
    ]);
    stream.write_all(head.as_bytes()).await.unwrap();
    // A byte every 100 ms: the body would take over a minute.
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let answer = read_answer(&mut reader).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.json["error"], "request_timeout");
    assert!(closed_by_server(&mut reader).await);
    trickle.abort();
    nothing_stored(&h).await;
}

/// Sends header bytes one at a time, never finishing the headers, until the server closes the
/// connection; returns whether it did within the deadline.
async fn slowloris(mut stream: TcpStream, pause: Duration) -> bool {
    let cut = async {
        stream
            .write_all(b"POST /webhooks/jira HTTP/1.1\r\nX-Pad: ")
            .await?;
        let mut byte = [0u8; 1];
        loop {
            stream.write_all(b"a").await?;
            // A read that ends (EOF or reset) within the pause means the server cut us.
            if let Ok(r) = tokio::time::timeout(pause, stream.read(&mut byte)).await {
                return r.map(|_| ());
            }
        }
    };
    tokio::time::timeout(WAIT, cut).await.is_ok()
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alives_are_cut_by_the_header_timeout() {
    let h = daemon(&[("JITBRIDGE__SERVER__HEADER_TIMEOUT", "1s")]).await;
    assert!(
        slowloris(connect(&h).await, Duration::from_millis(100)).await,
        "a header trickled a byte per 100 ms was never cut"
    );

    // A keep-alive connection that finished its request and then sends nothing.
    let mut idle = connect(&h).await;
    idle.write_all(b"GET /webhooks/jira HTTP/1.1\r\nHost: jitbridge\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut idle).await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert!(
        closed_by_server(&mut idle).await,
        "an idle keep-alive connection was never closed"
    );

    // A connection that never sends a byte.
    let mut silent = connect(&h).await;
    assert!(closed_by_server(&mut silent).await);
}

#[tokio::test]
async fn at_the_connection_cap_a_new_connection_waits_for_a_slot_and_admin_stays_reachable() {
    let h = daemon(&[
        ("JITBRIDGE__SERVER__MAX_CONNECTIONS", "1"),
        ("JITBRIDGE__SERVER__HEADER_TIMEOUT", "3s"),
    ])
    .await;
    // The one slot: a keep-alive connection, proven accepted by its answer, then idle.
    let mut holder = connect(&h).await;
    holder
        .write_all(b"GET /webhooks/jira HTTP/1.1\r\nHost: jitbridge\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut holder).await.status, 405);

    // The admin listener has slots of its own.
    let health = h.http.get(h.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = h.http.get(h.admin_url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("jitbridge_http_connections{listener=\"webhook\"}"),
        "{metrics}"
    );

    // A valid delivery on a second connection waits in the backlog, is served once the idle
    // holder is cut, and so finds the holder already closed when its answer arrives.
    let mut second = connect(&h).await;
    second
        .write_all(&signed_delivery_request("ACCESS-951", "cap-1"))
        .await
        .unwrap();
    let answer = read_answer(&mut second).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert!(
        already_closed(holder),
        "the second connection was served while the only slot was held"
    );
}

#[tokio::test]
async fn valid_deliveries_are_served_while_slowloris_clients_hold_the_connection_cap() {
    const ATTACKERS: usize = 12;
    const DELIVERIES: usize = 5;
    let h = daemon(&[
        ("JITBRIDGE__SERVER__MAX_CONNECTIONS", "8"),
        ("JITBRIDGE__SERVER__HEADER_TIMEOUT", "1s"),
    ])
    .await;
    let addr = h.daemon().webhook_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..ATTACKERS {
        let (stop, cuts) = (stop.clone(), cuts.clone());
        attackers.spawn(async move {
            // Bounded: reconnects at most 100 times, each attempt bounded by WAIT.
            for _ in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = TcpStream::connect(addr).await else {
                    return;
                };
                if slowloris(stream, Duration::from_millis(100)).await {
                    cuts.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Let the attack fill the cap before the deliveries come.
    let filled = crate::harness::eventually(WAIT, || async {
        (cuts.load(Ordering::Relaxed) >= ATTACKERS).then_some(())
    })
    .await;
    assert!(filled.is_some(), "the slow clients were never cut");

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(WAIT)
        .build()
        .unwrap();
    let cuts_before = cuts.load(Ordering::Relaxed);
    for i in 0..DELIVERIES {
        let (body, sig) = signed_approval(&format!("ACCESS-96{i}"));
        let resp = client
            .post(h.webhook_url())
            .header("X-Hub-Signature", sig)
            .header(
                "X-Atlassian-Webhook-Identifier",
                format!("during-attack-{i}"),
            )
            .body(body)
            .send()
            .await
            .expect("a valid delivery is answered during the attack");
        assert_eq!(resp.status(), 202);
    }
    assert!(
        cuts.load(Ordering::Relaxed) > cuts_before,
        "the attack did not go on during the deliveries"
    );
    stop.store(true, Ordering::Relaxed);

    // Shutdown is not held up by slow clients either.
    let mut h = h;
    tokio::time::timeout(WAIT, h.stop_daemon())
        .await
        .expect("the daemon stops while slow clients are connected");
    attackers.shutdown().await;
}
