//! Telling the service manager how the daemon is doing: systemd's
//! `sd_notify` protocol, for a `Type=notify` unit (`contrib/corral.service`).
//!
//! The protocol is one datagram of `KEY=VALUE` lines sent to the `AF_UNIX`
//! socket that `$NOTIFY_SOCKET` names: a path when it starts with `/`, a name
//! in Linux's abstract namespace when it starts with `@`. Without the
//! variable there is no service manager to tell, and nothing is sent. The
//! daemon sends `READY=1` once its socket serves requests and its store is
//! open, and `STOPPING=1` when it begins to stop.
//!
//! The variable is left in the daemon's environment (a later `STOPPING=1`
//! needs it, and unsetting it in a threaded process is unsound), but it is
//! for the daemon's own process only: agents never inherit it (see the
//! supervisor's base environment in `corral-core`), and a daemon the CLI
//! starts in the background is started without it.
//!
//! Hand-written rather than through the `sd-notify` crate: that crate
//! connects to the variable's value as a path, so an abstract-namespace
//! socket (`@name`) would not be reached.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable naming the service manager's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither a path (`/…`) nor an abstract name (`@…`).
    #[error("{NOTIFY_SOCKET}={0:?} is neither a socket path (/…) nor an abstract socket name (@…)")]
    Address(String),
    /// The socket could not be made or the datagram not sent.
    #[error("cannot notify the service manager at {address:?}: {source}")]
    Send {
        /// `$NOTIFY_SOCKET`'s value.
        address: String,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },
}

/// Sends `state` (`KEY=VALUE` lines, e.g. `READY=1`) to the service manager
/// named by `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset or
/// empty: no service manager waits for word. One non-blocking datagram send,
/// so it may be called from an async task.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(address) if !address.is_empty() => send_to(&address, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` as one datagram to `address`: a socket path (`/…`) or an
/// abstract socket name (`@…`, the `@` standing for the leading NUL byte).
pub fn send_to(address: &OsStr, state: &str) -> Result<(), NotifyError> {
    let shown = || address.to_string_lossy().into_owned();
    let failed = |source| NotifyError::Send {
        address: shown(),
        source,
    };
    let bytes = address.as_bytes();
    let addr = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(address).map_err(failed)?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).map_err(failed)?
        }
        _ => return Err(NotifyError::Address(shown())),
    };
    let socket = UnixDatagram::unbound().map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    let sent = socket
        .send_to_addr(state.as_bytes(), &addr)
        .map_err(failed)?;
    if sent != state.len() {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn a_socket_path_gets_the_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\nSTATUS=serving\n").unwrap();
        assert_eq!(received(&manager), "READY=1\nSTATUS=serving\n");
    }

    #[test]
    fn an_abstract_name_gets_the_datagram() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("corral-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1\n").unwrap();
        assert_eq!(received(&manager), "STOPPING=1\n");
    }

    #[test]
    fn other_addresses_are_refused_by_name() {
        for bad in ["", "relative/notify.sock", "vsock:2:1234"] {
            let e = send_to(OsStr::new(bad), "READY=1\n").unwrap_err();
            assert!(matches!(e, NotifyError::Address(_)), "{bad}: {e}");
            assert!(e.to_string().contains("NOTIFY_SOCKET"), "{e}");
        }
    }

    #[test]
    fn nobody_listening_is_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        let e = send_to(path.as_os_str(), "READY=1\n").unwrap_err();
        assert!(e.to_string().contains("gone.sock"), "{e}");
    }
}
