//! The Unix socket: created mode 0600 (root only), one task per connection, each request
//! handed to the engine and answered in order. Peers that are not root are refused even if the
//! file mode was loosened.

use std::{
    io,
    os::unix::{fs::PermissionsExt, net::UnixListener as StdListener},
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, warn};

use crate::daemon::{
    DaemonError,
    engine::Command,
    protocol::{
        self, ErrorKind, ErrorReply, MAX_LINE, Request, RequestLine, Response, ResponseLine,
    },
    secure_dir,
};

/// Binds the socket at `path`: creates its directory (0700) when missing (refusing one that
/// others own or can write, see [`secure_dir`]), refuses when a
/// daemon already answers there, removes a stale socket file, and creates the socket with
/// mode 0600.
pub fn bind(path: &Path) -> Result<StdListener, DaemonError> {
    let socket_error = |action: &'static str| {
        let path = path.to_path_buf();
        move |source: io::Error| DaemonError::Socket {
            action,
            path,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        secure_dir::ensure("socket directory", dir)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        match protocol::call(path, &Request::Status, Duration::from_secs(5)) {
            Ok(Response::Ok(protocol::Reply::Status(status))) => {
                return Err(DaemonError::AlreadyRunning {
                    what: format!("socket {}", path.display()),
                    pid: Some(status.pid),
                });
            }
            Ok(_) | Err(protocol::ClientError::Garbled { .. }) => {
                return Err(DaemonError::AlreadyRunning {
                    what: format!("socket {}", path.display()),
                    pid: None,
                });
            }
            // Only a socket is stale: anything else there is someone's file.
            Err(_) if !is_socket(path) => {
                return Err(DaemonError::NotASocket(path.to_path_buf()));
            }
            Err(_) => {
                std::fs::remove_file(path).map_err(socket_error("removing the stale socket"))?;
            }
        }
    }
    // The socket file gets its mode from the umask at bind time: bind under umask 0177 so it is
    // never, even briefly, connectable by others.
    // SAFETY: umask only swaps the process's file mode mask.
    let previous = unsafe { libc::umask(0o177) };
    let bound = StdListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = bound.map_err(socket_error("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_error("setting the mode of"))?;
    listener
        .set_nonblocking(true)
        .map_err(socket_error("configuring"))?;
    Ok(listener)
}

/// Whether `path` itself (not what a symlink there points to) is a Unix socket.
fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket())
}

/// Accepts connections until `shutdown`, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let commands = commands.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, commands, shutdown).await {
                            debug!(error = %e, "connection ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

/// Whether the peer of `stream` may talk to the daemon: root, or the daemon's own user.
fn allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .map(|cred| cred.uid() == 0 || cred.uid() == me)
        .unwrap_or(false)
}

async fn write_response(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line =
        serde_json::to_vec(&ResponseLine::new(response.clone())).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn connection(
    mut stream: UnixStream,
    commands: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    if !allowed(&stream) {
        let refusal = ErrorReply::new(
            ErrorKind::Forbidden,
            "only root can talk to the apifence daemon; run the command as root",
        );
        return write_response(&mut stream, &Response::Error(refusal)).await;
    }
    let (read, mut write) = stream.split();
    // One request per line, at most MAX_LINE bytes (a longer one is answered and ends the
    // connection, since the rest of it can't be told apart from the next request).
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
    loop {
        let next = tokio::select! {
            next = lines.next() => next,
            _ = shutdown.changed() => return Ok(()),
        };
        let (response, last) = match next {
            None => return Ok(()),
            Some(Err(LinesCodecError::Io(e))) if e.kind() != io::ErrorKind::InvalidData => {
                return Err(e);
            }
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => (
                Response::Error(ErrorReply::new(
                    ErrorKind::BadRequest,
                    format!("request longer than {MAX_LINE} bytes; send a shorter list"),
                )),
                true,
            ),
            Some(Err(LinesCodecError::Io(_))) => (
                Response::Error(ErrorReply::new(
                    ErrorKind::BadRequest,
                    "the request is not UTF-8 text; send one JSON request per line",
                )),
                true,
            ),
            Some(Ok(line)) => match answer(&line, &commands).await {
                Some(response) => (response, false),
                None => return Ok(()),
            },
        };
        let mut bytes =
            serde_json::to_vec(&ResponseLine::new(response)).map_err(io::Error::other)?;
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
        if last {
            return Ok(());
        }
    }
}

/// The response to one request `line`; `None` when the daemon is shutting down.
async fn answer(line: &str, commands: &mpsc::Sender<Command>) -> Option<Response> {
    if let Some(mismatch) = protocol::version_mismatch(line.as_bytes()) {
        return Some(Response::Error(ErrorReply::new(
            ErrorKind::BadRequest,
            format!("the request has {mismatch}"),
        )));
    }
    let request = match serde_json::from_str::<RequestLine>(line) {
        Ok(parsed) => parsed.request,
        Err(e) => {
            return Some(Response::Error(ErrorReply::new(
                ErrorKind::BadRequest,
                format!("not a request ({e}); see the protocol in `apifence daemon --help`"),
            )));
        }
    };
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Request { request, reply })
        .await
        .ok()?;
    answer.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("apifence-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("apifence.toml");
        std::fs::write(&file, "keep me").unwrap();
        let error = bind(&file).unwrap_err().to_string();
        assert!(error.contains("exists and is not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let stale = dir.join("apifence.sock");
        drop(StdListener::bind(&stale).unwrap());
        drop(bind(&stale).expect("a stale socket is replaced"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
