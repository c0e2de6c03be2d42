//! The handshake that opens every link connection, symmetric for dialer and listener.
//!
//! 1. Each side sends a hello: `"WARRENCL" | u16 link protocol | u16 body length | body`, the body
//!    being postcard of [`Hello`] (Warren's version, node name and id, cluster id, a random
//!    32-byte nonce). Bodies above [`MAX_HELLO`] bytes, names above 255 bytes, a wrong magic or
//!    protocol end the connection.
//! 2. Each checks the other's hello (own name, id against name, version, cluster id); a side that
//!    objects sends a refusal (`2 | u16 length | reason`) and closes. Otherwise it sends its proof
//!    (`1 | HMAC-SHA256(secret, their nonce || own nonce || own name)`): the secret never travels.
//! 3. Each verifies the other's proof (constant time); a bad one is refused as in 2, a good one
//!    answered with `3` (accepted). A side is connected once it has sent and received `3`.
//!
//! Every refusal is logged (`warn!`) by the side that refuses and by the side refused, both naming
//! the peer's address and node name.

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use super::{LinkError, Remote};

pub const MAGIC: &[u8; 8] = b"WARRENCL";
pub const PROTOCOL: u16 = 1;
/// The largest hello body accepted.
pub const MAX_HELLO: usize = 1024;
/// The longest node name, version or cluster id accepted.
pub const MAX_NAME: usize = 255;
/// The longest refusal reason accepted (longer ones are cut when sent).
const MAX_REASON: usize = 1024;

const PROOF: u8 = 1;
const REFUSAL: u8 = 2;
const ACCEPTED: u8 = 3;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Hello {
    pub(super) version: String,
    pub(super) name: String,
    pub(super) id: u64,
    pub(super) cluster_id: Option<String>,
    pub(super) nonce: [u8; 32],
}

/// This node, as the handshake presents it.
pub struct Local<'a> {
    pub name: &'a str,
    pub id: u64,
    pub version: &'a str,
    pub cluster_id: Option<String>,
    pub secret: &'a [u8],
}

fn proof(
    secret: &[u8],
    their_nonce: &[u8; 32],
    own_nonce: &[u8; 32],
    own_name: &str,
) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(their_nonce);
    mac.update(own_nonce);
    mac.update(own_name.as_bytes());
    mac
}

/// Runs the handshake on a fresh connection to or from `peer`. On success returns the stream
/// and what was learnt of the other side. On failure the reason is logged here; a refusal this
/// side decided is sent to the other side first (the stream is then closed gently in the
/// background so the refusal is not lost to a reset).
pub async fn handshake(
    mut s: TcpStream,
    me: &Local<'_>,
    peer: SocketAddr,
) -> Result<(TcpStream, Remote), LinkError> {
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let hello = Hello {
        version: me.version.to_owned(),
        name: me.name.to_owned(),
        id: me.id,
        cluster_id: me.cluster_id.clone(),
        nonce,
    };
    let body = postcard::to_stdvec(&hello).map_err(|e| LinkError::Refused(e.to_string()))?;
    let mut msg = Vec::with_capacity(12 + body.len());
    msg.extend_from_slice(MAGIC);
    msg.extend_from_slice(&PROTOCOL.to_be_bytes());
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&body);
    s.write_all(&msg).await.map_err(|e| io_err(me, peer, e))?;

    // Their hello.
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .await
        .map_err(|e| io_err(me, peer, e))?;
    if &head[..8] != MAGIC {
        return Err(bad(
            me,
            peer,
            "it is not a Warren cluster link (bad magic)".into(),
        ));
    }
    let proto = u16::from_be_bytes([head[8], head[9]]);
    if proto != PROTOCOL {
        return Err(bad(
            me,
            peer,
            format!("it speaks cluster link protocol {proto}, this node {PROTOCOL}"),
        ));
    }
    let len = u16::from_be_bytes([head[10], head[11]]) as usize;
    if len > MAX_HELLO {
        return Err(bad(
            me,
            peer,
            format!("its hello is {len} bytes, above {MAX_HELLO}"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .await
        .map_err(|e| io_err(me, peer, e))?;
    let theirs: Hello = match postcard::from_bytes(&body) {
        Ok(h) => h,
        Err(e) => return Err(bad(me, peer, format!("its hello does not decode ({e})"))),
    };
    if theirs.name.len() > MAX_NAME
        || theirs.version.len() > MAX_NAME
        || theirs
            .cluster_id
            .as_ref()
            .is_some_and(|c| c.len() > MAX_NAME)
    {
        return Err(bad(
            me,
            peer,
            format!("its hello has a field above {MAX_NAME} bytes"),
        ));
    }
    // Everything below logs these strings: no control characters (no forged log lines).
    let printable = |t: &str| !t.chars().any(char::is_control);
    if !printable(&theirs.name)
        || !printable(&theirs.version)
        || !theirs.cluster_id.as_deref().is_none_or(printable)
    {
        return Err(bad(me, peer, "its hello has control characters".into()));
    }
    let name = theirs.name.as_str();

    if let Some(reason) = check(me, &theirs) {
        return Err(refuse(s, me, peer, name, reason).await);
    }

    // Prove we hold the secret; check they do.
    let mine = proof(me.secret, &theirs.nonce, &nonce, me.name)
        .finalize()
        .into_bytes();
    let mut p = Vec::with_capacity(33);
    p.push(PROOF);
    p.extend_from_slice(&mine);
    s.write_all(&p).await.map_err(|e| io_err(me, peer, e))?;
    match read_tag(&mut s, me, peer, name).await? {
        PROOF => {}
        t => return Err(unexpected(me, peer, name, t)),
    }
    let mut their_proof = [0u8; 32];
    s.read_exact(&mut their_proof)
        .await
        .map_err(|e| io_err(me, peer, e))?;
    if proof(me.secret, &nonce, &theirs.nonce, name)
        .verify_slice(&their_proof)
        .is_err()
    {
        let reason =
            format!("node {name} ({peer}) refused: it does not hold this cluster's secret");
        return Err(refuse(s, me, peer, name, reason).await);
    }
    s.write_all(&[ACCEPTED])
        .await
        .map_err(|e| io_err(me, peer, e))?;
    match read_tag(&mut s, me, peer, name).await? {
        ACCEPTED => {}
        t => return Err(unexpected(me, peer, name, t)),
    }
    Ok((
        s,
        Remote {
            name: theirs.name,
            id: theirs.id,
            version: theirs.version,
            cluster_id: theirs.cluster_id,
            addr: peer,
        },
    ))
}

/// What this side objects to in the other's hello, if anything.
fn check(me: &Local<'_>, theirs: &Hello) -> Option<String> {
    let name = &theirs.name;
    if name == me.name {
        return Some(format!(
            "node {name} has this node's own name: two nodes cannot share a name"
        ));
    }
    let expected = crate::cluster::types::node_id(name);
    if theirs.id != expected {
        return Some(format!(
            "node {name} claims node id {}, which does not match its name (expected {expected})",
            theirs.id
        ));
    }
    if theirs.version != me.version {
        return Some(format!(
            "node {name} runs Warren {} and this node runs {}: mixed versions cannot form a cluster",
            theirs.version, me.version
        ));
    }
    if let (Some(t), Some(m)) = (&theirs.cluster_id, &me.cluster_id) {
        if t != m {
            return Some(format!(
                "node {name} belongs to cluster {t}, this node to cluster {m}"
            ));
        }
    }
    None
}

/// The next message tag; a refusal is read, logged and returned as the error.
async fn read_tag(
    s: &mut TcpStream,
    me: &Local<'_>,
    peer: SocketAddr,
    name: &str,
) -> Result<u8, LinkError> {
    let tag = s.read_u8().await.map_err(|e| io_err(me, peer, e))?;
    if tag != REFUSAL {
        return Ok(tag);
    }
    let len = s.read_u16().await.map_err(|e| io_err(me, peer, e))? as usize;
    if len > MAX_REASON {
        return Err(bad(
            me,
            peer,
            format!("its refusal is {len} bytes, above {MAX_REASON}"),
        ));
    }
    let mut r = vec![0u8; len];
    s.read_exact(&mut r)
        .await
        .map_err(|e| io_err(me, peer, e))?;
    let reason: String = String::from_utf8_lossy(&r)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    warn!(node = %me.name, "cluster link: node {name} ({peer}) refused the link: {reason}");
    Err(LinkError::Refused(format!(
        "node {name} refused the link: {reason}"
    )))
}

/// Sends a refusal, logs it, and closes the connection in the background once the other side
/// had a chance to read it.
async fn refuse(
    mut s: TcpStream,
    me: &Local<'_>,
    peer: SocketAddr,
    name: &str,
    reason: String,
) -> LinkError {
    warn!(node = %me.name, "cluster link: refused node {name} ({peer}): {reason}");
    let mut cut = reason.as_str();
    while cut.len() > MAX_REASON {
        cut = &cut[..cut.floor_char_boundary_compat(MAX_REASON)];
    }
    let mut m = Vec::with_capacity(3 + cut.len());
    m.push(REFUSAL);
    m.extend_from_slice(&(cut.len() as u16).to_be_bytes());
    m.extend_from_slice(cut.as_bytes());
    tokio::spawn(async move {
        // Bounded: the refusal is small, and the other side gets a second to read it while
        // what it still sends is read and dropped (closing with unread input would reset the
        // connection and could lose the refusal on the way).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            s.write_all(&m).await?;
            s.shutdown().await?;
            let mut sink = [0u8; 1024];
            let mut total = 0usize;
            while total < 64 << 10 {
                let n = s.read(&mut sink).await?;
                if n == 0 {
                    break;
                }
                total += n;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
    LinkError::Refused(reason)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}
impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// A peer that does not speak the handshake properly: logged and refused without a reply.
fn bad(me: &Local<'_>, peer: SocketAddr, what: String) -> LinkError {
    warn!(node = %me.name, "cluster link: dropped the connection with {peer}: {what}");
    LinkError::Refused(format!("{peer}: {what}"))
}

fn unexpected(me: &Local<'_>, peer: SocketAddr, name: &str, tag: u8) -> LinkError {
    bad(
        me,
        peer,
        format!("node {name} sent message {tag} out of turn in the handshake"),
    )
}

fn io_err(me: &Local<'_>, peer: SocketAddr, e: std::io::Error) -> LinkError {
    warn!(node = %me.name, "cluster link: handshake with {peer} failed: {e}");
    LinkError::Unreachable(format!("handshake with {peer} failed: {e}"))
}
