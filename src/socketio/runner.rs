//! The one local runner for operations on a selection of sockets: `socketsJoin`,
//! `socketsLeave`, `disconnectSockets` and `fetchSockets` on the sockets of this node that a
//! [`Selector`] picks. The broadcast operator (library API), the emitter bridge and the cluster
//! runtime (operations other nodes ask for) all run them through [`SocketsOp::run_local`].

use super::namespace::Namespace;
use super::socket::Socket;
use crate::rooms::Selector;

/// What to do to the selected sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketsOp {
    /// `socketsJoin(rooms)`.
    Join(Vec<String>),
    /// `socketsLeave(rooms)`.
    Leave(Vec<String>),
    /// `disconnectSockets(close)`: each socket leaves the namespace (the client gets a
    /// DISCONNECT packet); with `close`, its whole Engine.IO connection is closed.
    Disconnect {
        /// Close the underlying connection too.
        close: bool,
    },
    /// `fetchSockets()`: nothing changes; the sockets are returned.
    Fetch,
}

impl SocketsOp {
    /// Runs the operation on the sockets of `ns` on this node that `selector`'s rooms and
    /// except pick (`selector.nsp` is the name of `ns`). Returns those sockets: their number is
    /// how many were affected, and for [`SocketsOp::Fetch`] they are what was found.
    pub fn run_local(&self, ns: &Namespace, selector: &Selector) -> Vec<Socket> {
        debug_assert_eq!(selector.nsp, ns.name(), "a selector runs in its own namespace");
        let sockets = select(ns, selector);
        for socket in &sockets {
            match self {
                Self::Join(rooms) => {
                    for room in rooms {
                        socket.join(room);
                    }
                }
                Self::Leave(rooms) => {
                    for room in rooms {
                        socket.leave(room);
                    }
                }
                Self::Disconnect { close: true } => socket.close_connection(),
                Self::Disconnect { close: false } => socket.disconnect(),
                Self::Fetch => {}
            }
        }
        sockets
    }
}

/// The sockets of `ns` on this node in any of `selector.rooms` (every socket when empty) and in
/// none of `selector.except`. A socket id names that socket's own room.
pub(crate) fn select(ns: &Namespace, selector: &Selector) -> Vec<Socket> {
    let except = ns.members_of(&selector.except);
    let all = if selector.rooms.is_empty() {
        ns.sockets()
    } else {
        ns.members_of(&selector.rooms).into_iter().filter_map(|sid| ns.socket(sid.as_str())).collect()
    };
    all.into_iter().filter(|s| !except.contains(&s.sid())).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::socketio::{RemoteSocket, Server, SocketIoConfig};

    /// Serves `io` over HTTP on `127.0.0.1:0`.
    async fn serve(io: Server) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, remote)) = listener.accept().await {
                let io = io.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let io = io.clone();
                        async move { Ok::<_, std::convert::Infallible>(io.handle(req, remote).await) }
                    });
                    let conn = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(conn, service).await;
                });
            }
        });
        addr
    }

    /// One long-polling request; returns the response body.
    async fn poll(addr: SocketAddr, method: &str, sid: Option<&str>, body: &str) -> String {
        let sid = sid.map(|s| format!("&sid={s}")).unwrap_or_default();
        let request = format!(
            "{method} /socket.io/?EIO=4&transport=polling{sid} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response.split_once("\r\n\r\n").unwrap().1.to_owned()
    }

    /// Opens an Engine.IO session and joins each namespace of `nsps` on it.
    async fn client(addr: SocketAddr, nsps: &[&str]) {
        let open = poll(addr, "GET", None, "").await;
        let sid = open.split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        for nsp in nsps {
            let connect = if *nsp == "/" { "40".to_owned() } else { format!("40{nsp},") };
            assert_eq!(poll(addr, "POST", Some(&sid), &connect).await, "ok");
        }
    }

    /// A server with `n` clients, each connected to `/` and `/chat`; returns `/`'s sockets.
    async fn sockets(n: usize) -> (Server, Namespace, Vec<Socket>) {
        let io = Server::new(SocketIoConfig::default());
        let ns = io.of("/");
        io.of("/chat");
        let addr = serve(io.clone()).await;
        for _ in 0..n {
            client(addr, &["/", "/chat"]).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ns.socket_count() < n || io.of("/chat").socket_count() < n {
            assert!(tokio::time::Instant::now() < deadline, "{} sockets connected", ns.socket_count());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut sockets = ns.sockets();
        sockets.sort_by(|a, b| a.id().cmp(b.id()));
        (io, ns, sockets)
    }

    fn ids(sockets: &[Socket]) -> HashSet<String> {
        sockets.iter().map(|s| s.id().to_owned()).collect()
    }

    fn rooms_of(socket: &Socket) -> Vec<String> {
        let mut rooms = socket.rooms().into_iter().skip(1).collect::<Vec<_>>();
        rooms.sort();
        rooms
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn join_and_leave_apply_to_the_rooms_minus_except() {
        let (_io, ns, s) = sockets(4).await;
        s[0].join("a");
        s[1].join("a");
        s[1].join("b");
        s[2].join("b");

        // In "a" but not in "b": s0 only.
        let selector = Selector::namespace("/").to("a").except("b");
        let joined = SocketsOp::Join(strings(&["x", "y"])).run_local(&ns, &selector);
        assert_eq!(ids(&joined), ids(&s[..1]));
        assert_eq!(rooms_of(&s[0]), strings(&["a", "x", "y"]));
        assert_eq!(rooms_of(&s[1]), strings(&["a", "b"]));

        // In "a" or "b": s0, s1, s2; leaving a room a socket is not in changes nothing.
        let selector = Selector::namespace("/").to("a").to("b");
        let left = SocketsOp::Leave(strings(&["b", "x"])).run_local(&ns, &selector);
        assert_eq!(ids(&left), ids(&s[..3]));
        assert_eq!(rooms_of(&s[0]), strings(&["a", "y"]));
        assert_eq!(rooms_of(&s[1]), strings(&["a"]));
        assert!(rooms_of(&s[2]).is_empty());
        assert!(ns.rooms().iter().all(|r| r != "b" && r != "x"), "{:?}", ns.rooms());

        // The whole namespace except "a": s2 and s3.
        let joined = SocketsOp::Join(strings(&["z"])).run_local(&ns, &Selector::namespace("/").except("a"));
        assert_eq!(ids(&joined), ids(&s[2..]));
        // The operator runs the same: `to`/`except`, counted.
        assert_eq!(ns.to("z").except(s[3].id().to_owned()).join("w"), 1);
        assert_eq!(rooms_of(&s[2]), strings(&["w", "z"]));
        assert_eq!(ns.select(&strings(&["z"]), &[]).sockets_join(&strings(&["v"])).await.affected, 2);
        assert_eq!(ns.select(&strings(&["v"]), &[]).run_ordered(SocketsOp::Leave(strings(&["v"]))), 2);
        assert!(!ns.rooms().contains(&"v".to_owned()));
    }

    #[tokio::test]
    async fn a_socket_id_selects_its_own_socket_and_is_no_room_to_join() {
        let (_io, ns, s) = sockets(3).await;
        let me = s[1].id().to_owned();

        let fetched = SocketsOp::Fetch.run_local(&ns, &Selector::namespace("/").to(me.clone()));
        assert_eq!(ids(&fetched), ids(&s[1..2]));
        let others = SocketsOp::Fetch.run_local(&ns, &Selector::namespace("/").except(me.clone()));
        assert_eq!(ids(&others), HashSet::from([s[0].id().to_owned(), s[2].id().to_owned()]));
        // An id room and a named room together; except by id wins.
        s[0].join("r");
        let selector = Selector::namespace("/").to("r").to(me.clone()).except(s[0].id().to_owned());
        assert_eq!(ids(&SocketsOp::Fetch.run_local(&ns, &selector)), ids(&s[1..2]));

        // Joining a socket's own id is a no-op for it (it is always in that room).
        let joined =
            SocketsOp::Join(vec![me.clone(), "r".into()]).run_local(&ns, &Selector::namespace("/").to(me.clone()));
        assert_eq!(joined.len(), 1);
        assert_eq!(s[1].rooms(), vec![me.clone(), "r".to_owned()]);
        // Leaving it is a no-op too.
        SocketsOp::Leave(vec![me.clone()]).run_local(&ns, &Selector::namespace("/").to(me.clone()));
        assert_eq!(s[1].rooms(), vec![me.clone(), "r".to_owned()]);
        // An id of a socket that is not here selects nothing.
        let gone = crate::Sid::with_tag(0).as_str().to_owned();
        assert!(SocketsOp::Fetch.run_local(&ns, &Selector::namespace("/").to(gone)).is_empty());
    }

    #[tokio::test]
    async fn fetch_changes_nothing_and_describes_sockets_for_other_nodes() {
        let (_io, ns, s) = sockets(2).await;
        s[0].join("room");
        let fetched = SocketsOp::Fetch.run_local(&ns, &Selector::namespace("/").to("room"));
        assert_eq!(ids(&fetched), ids(&s[..1]));
        assert_eq!(rooms_of(&s[0]), strings(&["room"]));
        assert_eq!(ns.socket_count(), 2);

        let remote = RemoteSocket::of(&fetched[0], 7);
        assert_eq!((remote.id.as_str(), remote.nsp.as_str(), remote.node), (s[0].id(), "/", 7));
        assert_eq!(remote.rooms, strings(&["room"]), "its own id room is left out");
        assert_eq!(remote.handshake["address"].as_str().map(|a| a.starts_with("127.0.0.1:")), Some(true));
        assert!(remote.handshake["query"].as_str().unwrap().contains("EIO=4"));
        assert_eq!(remote.handshake["auth"], serde_json::json!({}));
        assert!(remote.handshake["issued"].as_u64().unwrap() > 0);
        assert_eq!(remote.data, serde_json::json!({}));
    }

    #[tokio::test]
    async fn disconnect_leaves_the_namespace_or_closes_the_connection() {
        let (io, ns, s) = sockets(3).await;
        let chat = io.of("/chat");
        s[0].join("a");
        s[1].join("a");

        // Without close: s0 leaves "/" (and its rooms); its "/chat" socket stays.
        let done = SocketsOp::Disconnect { close: false }
            .run_local(&ns, &Selector::namespace("/").to("a").except(s[1].id().to_owned()));
        assert_eq!(ids(&done), ids(&s[..1]));
        assert!(ns.socket(s[0].id()).is_none());
        assert_eq!(ns.socket_count(), 2);
        assert_eq!(chat.socket_count(), 3);
        assert_eq!(ns.to("a").sockets().len(), 1);

        // With close: s1's whole connection goes, "/chat" included.
        let done = SocketsOp::Disconnect { close: true }.run_local(&ns, &Selector::namespace("/").to("a"));
        assert_eq!(ids(&done), ids(&s[1..2]));
        assert!(ns.socket(s[1].id()).is_none());
        assert_eq!(chat.socket_count(), 2);
        assert!(ns.rooms().is_empty());
        // The operator counts the same way: one socket left.
        assert_eq!(ns.broadcast().disconnect_sockets(true).await.affected, 1);
        assert_eq!((ns.socket_count(), chat.socket_count()), (0, 1));
    }
}
