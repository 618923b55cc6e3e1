//! Long-polling requests of an existing session: the GET that waits for
//! packets (parked until the session has something for it) and the POST that
//! delivers the client's packets.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::connection::Connection;
use super::endpoint::{Engine, Handler};
use super::packet::{Frame, PacketType};
use super::response::{Body, ErrorCode, error_response, payload_response, payload_too_large, text_response};
use super::session::{CloseReason, PollReply, PollStart, RequestError, Transport};

impl<H: Handler> Engine<H> {
    /// A polling GET: answered at once when something is queued, else parked.
    pub(super) async fn poll(&self, conn: Arc<Connection<H::State>>) -> Response<Body> {
        let start = conn.session.lock().poll_start();
        let reply = match start {
            Ok(PollStart::Reply(reply)) => reply,
            Ok(PollStart::Park) => {
                let guard = ParkGuard { conn: &conn, answered: false };
                guard.wait().await
            }
            Err(RequestError::DuplicateGet) => {
                conn.wake_all();
                return error_response(ErrorCode::BadRequest);
            }
            Err(_) => return error_response(ErrorCode::BadRequest),
        };
        // A closed session's driver lingers until its last reply is taken.
        conn.driver_wake.notify_one();
        let mut body = BytesMut::new();
        let kind = match reply {
            PollReply::Frames(frames) => {
                metrics::counter!(crate::metrics::SOCKETIO_PACKETS_SENT).increment(frames.len() as u64);
                conn.framing.encode_payload(&frames, &mut body)
            }
            PollReply::Noop => conn.framing.encode_payload(&[Frame::control(PacketType::Noop)], &mut body),
            PollReply::Close => conn.framing.encode_payload(&[Frame::control(PacketType::Close)], &mut body),
        };
        payload_response(kind, body.freeze())
    }

    /// A polling POST: reads the body (bounded) and delivers its packets in order.
    pub(super) async fn post(&self, req: Request<Incoming>, conn: Arc<Connection<H::State>>) -> Response<Body> {
        let max = self.inner.config.max_payload;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return payload_too_large();
        }
        let started = conn.session.lock().post_start();
        if let Err(err) = started {
            if err == RequestError::DuplicatePost {
                conn.wake_all();
            }
            return error_response(ErrorCode::BadRequest);
        }
        // Marks the POST finished however this ends (the client may go away mid-body).
        let _post = PostGuard(&conn);
        let body = Limited::new(req.into_body(), max).collect().await;
        let body = match body {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    return payload_too_large();
                }
                conn.close_with(CloseReason::TransportError);
                return error_response(ErrorCode::BadRequest);
            }
        };
        self.deliver_payload(&conn, body);
        text_response(Bytes::from_static(b"ok"))
    }

    /// A polling POST whose body another node read (bounded there by `maxPayload`) and relayed
    /// here: delivered as [`Self::post`] delivers one.
    pub(super) async fn post_body(&self, conn: Arc<Connection<H::State>>, body: Bytes) -> Response<Body> {
        if body.len() > self.inner.config.max_payload {
            return payload_too_large();
        }
        let started = conn.session.lock().post_start();
        if let Err(err) = started {
            if err == RequestError::DuplicatePost {
                conn.wake_all();
            }
            return error_response(ErrorCode::BadRequest);
        }
        let _post = PostGuard(&conn);
        self.deliver_payload(&conn, body);
        text_response(Bytes::from_static(b"ok"))
    }

    /// Decodes a POST's payload and delivers its packets in order; a payload that does not
    /// decode closes the session.
    fn deliver_payload(&self, conn: &Arc<Connection<H::State>>, body: Bytes) {
        match conn.framing.decode_payload(body) {
            Ok(packets) => {
                for p in packets {
                    if !self.deliver(conn, p, Transport::Polling) {
                        break;
                    }
                }
            }
            Err(_) => conn.close_with(CloseReason::ParseError),
        }
    }
}

/// Ends a polling POST when dropped, whether it completed or was abandoned.
struct PostGuard<'a, S>(&'a Connection<S>);

impl<S> Drop for PostGuard<'_, S> {
    fn drop(&mut self) {
        self.0.session.lock().post_end();
    }
}

/// A parked polling GET: answered when the session has something for it;
/// marks the session free again if the client goes away first.
struct ParkGuard<'a, S> {
    conn: &'a Arc<Connection<S>>,
    answered: bool,
}

impl<S> ParkGuard<'_, S> {
    async fn wait(mut self) -> PollReply {
        loop {
            self.conn.poll_wake.notified().await;
            if let Some(reply) = self.conn.session.lock().poll_take() {
                self.answered = true;
                return reply;
            }
        }
    }
}

impl<S> Drop for ParkGuard<'_, S> {
    fn drop(&mut self) {
        if !self.answered {
            self.conn.session.lock().poll_abandoned();
        }
    }
}
