//! The systemd service protocol for `Type=notify`: a line such as `READY=1` sent as one
//! datagram to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace), and `WATCHDOG=1` every half of `$WATCHDOG_USEC` when the unit sets
//! `WatchdogSec=`. Without `$NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where the service manager listens, if it does.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honoured only when `$WATCHDOG_PID` is
    /// unset or ours). A socket that cannot be used is logged once and ignored.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| match open(&path) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    socket = %path.to_string_lossy(),
                    error = %e,
                    "cannot use NOTIFY_SOCKET; systemd hears nothing from this process"
                );
                None
            }
        });
        let ours = std::env::var("WATCHDOG_PID")
            .map(|pid| pid == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|us| *us > 0 && ours)
            .map(|us| Duration::from_micros(us) / 2);
        Notifier { target, watchdog }
    }

    /// Sends `state` (`READY=1`, `RELOADING=1`, `STOPPING=1`, ...); a failure is logged at
    /// debug: the service manager's view is not worth stopping the watch for.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            tracing::debug!(state, error = %e, "sd_notify failed");
        }
    }

    /// Starts the task that sends `WATCHDOG=1` every half watchdog interval, when the unit
    /// asks for it; the task ends when the returned handle is dropped.
    pub fn spawn_watchdog(&self) -> Option<AbortOnDrop> {
        let every = self.watchdog?;
        let (sock, addr) = self.target.as_ref()?;
        let sock = sock.try_clone().ok()?;
        let addr = addr.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = sock.send_to_addr(b"WATCHDOG=1", &addr);
            }
        });
        Some(AbortOnDrop(task))
    }
}

/// Aborts its task when dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn open(path: &std::ffi::OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_each_state_as_one_datagram() {
        let dir = std::env::temp_dir().join(format!("mt-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(open(path.as_os_str()).unwrap()),
            watchdog: None,
        };
        n.send("READY=1");
        n.send("STOPPING=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_watchdog_pings_until_dropped() {
        let dir = std::env::temp_dir().join(format!("mt-watchdog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let n = Notifier {
            target: Some(open(path.as_os_str()).unwrap()),
            watchdog: Some(Duration::from_millis(20)),
        };
        let guard = n.spawn_watchdog().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(guard);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 64];
        let mut pings = 0;
        while let Ok(len) = listener.recv(&mut buf) {
            assert_eq!(&buf[..len], b"WATCHDOG=1");
            pings += 1;
        }
        assert!(pings >= 3, "{pings} pings in 150 ms at one per 20 ms");
        // none after the guard is gone
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(listener.recv(&mut buf).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
