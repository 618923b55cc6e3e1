//! PUBLISH, SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, SPUBLISH, SSUBSCRIBE,
//! SUNSUBSCRIBE and PUBSUB CHANNELS / NUMSUB / NUMPAT / SHARDCHANNELS / SHARDNUMSUB.
//!
//! Ordering: a subscription confirmation is queued before the client joins the broker (so no
//! message can overtake it), and an unsubscription is confirmed after the client left it (so no
//! message follows the confirmation).

use bytes::Bytes;

use super::{Ctx, LOADING, Spec, spec};
use crate::resp::broker::Broker;
use crate::resp::client::Client;
use crate::resp::frame::{self, Reply};

const PS: &str = "pubsub";

/// PUBSUB's subcommands.
pub(crate) static SUBCOMMANDS: &[Spec] = &[
    spec("channels", "pubsub|channels", -2, LOADING, channels, PS, "2.8.0", "List active channels"),
    spec("numsub", "pubsub|numsub", -2, LOADING, numsub, PS, "2.8.0", "Get the count of subscribers for channels"),
    spec(
        "numpat",
        "pubsub|numpat",
        2,
        LOADING,
        numpat,
        PS,
        "2.8.0",
        "Get the count of unique patterns pattern subscriptions",
    ),
    spec(
        "shardchannels",
        "pubsub|shardchannels",
        -2,
        LOADING,
        shardchannels,
        PS,
        "7.0.0",
        "List active shard channels",
    ),
    spec(
        "shardnumsub",
        "pubsub|shardnumsub",
        -2,
        LOADING,
        shardnumsub,
        PS,
        "7.0.0",
        "Get the count of subscribers for shard channels",
    ),
];

/// Which family a (un)subscription belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    fn subscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"subscribe",
            Kind::Pattern => b"psubscribe",
            Kind::Shard => b"ssubscribe",
        }
    }

    fn unsubscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"unsubscribe",
            Kind::Pattern => b"punsubscribe",
            Kind::Shard => b"sunsubscribe",
        }
    }

    /// The count Redis puts in confirmations: channels + patterns, or shard channels.
    fn count(self, client: &Client) -> usize {
        match self {
            Kind::Channel | Kind::Pattern => client.subscription_count(),
            Kind::Shard => client.shard_channels.len(),
        }
    }
}

fn subs(client: &mut Client, kind: Kind) -> &mut crate::resp::client::Subscriptions {
    match kind {
        Kind::Channel => &mut client.channels,
        Kind::Pattern => &mut client.patterns,
        Kind::Shard => &mut client.shard_channels,
    }
}

fn confirm(ctx: &mut Ctx<'_>, word: &[u8], name: Option<&[u8]>, count: usize) {
    frame::write_push_len(ctx.out, ctx.client.proto, 3);
    frame::write_bulk(ctx.out, word);
    match name {
        Some(name) => frame::write_bulk(ctx.out, name),
        None => frame::write_null(ctx.out, ctx.client.proto),
    }
    frame::write_integer(ctx.out, i64::try_from(count).unwrap_or(i64::MAX));
}

fn do_subscribe(ctx: &mut Ctx<'_>, args: &[Bytes], kind: Kind) {
    for name in &args[1..] {
        let added = subs(ctx.client, kind).insert(name.clone());
        let count = kind.count(ctx.client);
        confirm(ctx, kind.subscribe_word(), Some(name), count);
        if added {
            ctx.flush();
            let broker = &ctx.shared.broker;
            match kind {
                Kind::Channel => broker.subscribe(name.clone(), &ctx.client.sub),
                Kind::Pattern => broker.psubscribe(name.clone(), &ctx.client.sub),
                Kind::Shard => broker.ssubscribe(name.clone(), &ctx.client.sub),
            }
        }
    }
    ctx.client.pubsub = true;
}

fn leave(broker: &Broker, kind: Kind, name: &[u8], id: u64) {
    match kind {
        Kind::Channel => broker.unsubscribe(name, id),
        Kind::Pattern => broker.punsubscribe(name, id),
        Kind::Shard => broker.sunsubscribe(name, id),
    }
}

fn do_unsubscribe(ctx: &mut Ctx<'_>, args: &[Bytes], kind: Kind) {
    let id = ctx.client.id;
    let names: Vec<Bytes> = if args.len() == 1 { subs(ctx.client, kind).ordered() } else { args[1..].to_vec() };
    if args.len() == 1 && names.is_empty() {
        let count = kind.count(ctx.client);
        confirm(ctx, kind.unsubscribe_word(), None, count);
    }
    for name in &names {
        if subs(ctx.client, kind).remove(name) {
            leave(&ctx.shared.broker, kind, name, id);
        }
        let count = kind.count(ctx.client);
        confirm(ctx, kind.unsubscribe_word(), Some(name), count);
    }
    if ctx.client.total_subscriptions() == 0 {
        ctx.client.pubsub = false;
    }
}

/// Leaves every channel, pattern and shard channel without confirmations (connection close,
/// RESET).
pub(crate) fn unsubscribe_all_silently(client: &mut Client, broker: &Broker) {
    for kind in [Kind::Channel, Kind::Pattern, Kind::Shard] {
        for name in subs(client, kind).ordered() {
            subs(client, kind).remove(&name);
            leave(broker, kind, &name, client.id);
        }
    }
}

/// `SUBSCRIBE channel [channel ...]`
pub(crate) fn subscribe(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    do_subscribe(ctx, args, Kind::Channel);
}

/// `UNSUBSCRIBE [channel ...]`
pub(crate) fn unsubscribe(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    do_unsubscribe(ctx, args, Kind::Channel);
}

/// `PSUBSCRIBE pattern [pattern ...]`
pub(crate) fn psubscribe(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    do_subscribe(ctx, args, Kind::Pattern);
}

/// `PUNSUBSCRIBE [pattern ...]`
pub(crate) fn punsubscribe(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    do_unsubscribe(ctx, args, Kind::Pattern);
}

/// `SSUBSCRIBE shardchannel [shardchannel ...]`
pub(crate) fn ssubscribe(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    do_subscribe(ctx, args, Kind::Shard);
}

/// `SUNSUBSCRIBE [shardchannel ...]`
pub(crate) fn sunsubscribe(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    do_unsubscribe(ctx, args, Kind::Shard);
}

/// `PUBLISH channel message`: runs the publish hook, delivers locally, replies with the number
/// of local receivers.
pub(crate) fn publish(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    publish_to(ctx, args, false);
}

/// `SPUBLISH shardchannel message`.
pub(crate) fn spublish(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    publish_to(ctx, args, true);
}

/// PUBLISH (or SPUBLISH when `shard`). The connection's reader adds `client.publishes` to the
/// metric once per read, and the hook and cluster come from the connection's own copy
/// ([`Broker::refresh`]): a pipelined PUBLISH touches no state that other connections write.
fn publish_to(ctx: &mut Ctx<'_>, args: &[Bytes], shard: bool) {
    let (channel, message) = (&args[1], &args[2]);
    let broker = &ctx.shared.broker;
    ctx.client.publishes += 1;
    broker.refresh(&mut ctx.client.handlers);
    if let Some(hook) = &ctx.client.handlers.hook {
        hook.on_publish(channel, message);
    }
    if ctx.client.pubsub {
        // The client may receive its own message: it must come after earlier replies.
        ctx.flush();
    }
    let receivers = if shard { broker.spublish(channel, message) } else { broker.publish(channel, message) };
    if let Some(cluster) = &ctx.client.handlers.cluster {
        cluster.publish(channel, message, shard);
    }
    // Like Redis Cluster, the reply counts this node's receivers only.
    ctx.integer(i64::try_from(receivers).unwrap_or(i64::MAX));
}

fn wrong_args(ctx: &mut Ctx<'_>, sub: &[u8]) {
    let mut text = b"ERR unknown subcommand or wrong number of arguments for '".to_vec();
    text.extend_from_slice(super::cstr(sub, usize::MAX));
    text.extend_from_slice(b"'. Try PUBSUB HELP.");
    ctx.error_bytes(&text);
}

fn list_names(ctx: &mut Ctx<'_>, args: &[Bytes], names: impl FnOnce(Option<&[u8]>) -> Vec<Bytes>) {
    if args.len() > 3 {
        wrong_args(ctx, &args[1]);
        return;
    }
    let names = names(args.get(2).map(|p| &p[..]));
    ctx.reply(&Reply::Array(names.into_iter().map(Reply::Bulk).collect()));
}

fn counts(ctx: &mut Ctx<'_>, args: &[Bytes], count: impl Fn(&[u8]) -> usize) {
    let mut items = Vec::with_capacity((args.len() - 2) * 2);
    for name in &args[2..] {
        items.push(Reply::Bulk(name.clone()));
        items.push(Reply::Integer(i64::try_from(count(name)).unwrap_or(i64::MAX)));
    }
    ctx.reply(&Reply::Array(items));
}

fn channels(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let broker = ctx.shared.broker.clone();
    list_names(ctx, args, |p| broker.channels(p));
}

fn shardchannels(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let broker = ctx.shared.broker.clone();
    list_names(ctx, args, |p| broker.shard_channels(p));
}

fn numsub(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let broker = ctx.shared.broker.clone();
    cluster_counts(ctx, args, false, |c| broker.numsub(c));
}

fn shardnumsub(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let broker = ctx.shared.broker.clone();
    cluster_counts(ctx, args, true, |c| broker.shard_numsub(c));
}

/// NUMSUB / SHARDNUMSUB: this node's counts, plus every other node's on a cluster node (the
/// reply waits for them, at most the cluster timeout).
fn cluster_counts(ctx: &mut Ctx<'_>, args: &[Bytes], shard: bool, count: impl Fn(&[u8]) -> usize) {
    let Some(cluster) = ctx.shared.broker.cluster() else {
        counts(ctx, args, count);
        return;
    };
    let channels: Vec<Bytes> = args[2..].to_vec();
    let local: Vec<u64> = channels.iter().map(|c| count(c) as u64).collect();
    let remote = cluster.numsub(channels.clone(), shard);
    ctx.defer(async move {
        let remote = remote.await;
        let mut items = Vec::with_capacity(channels.len() * 2);
        for (i, name) in channels.into_iter().enumerate() {
            let total = local[i] + remote.get(i).copied().unwrap_or(0);
            items.push(Reply::Bulk(name));
            items.push(Reply::Integer(i64::try_from(total).unwrap_or(i64::MAX)));
        }
        Reply::Array(items)
    });
}

fn numpat(ctx: &mut Ctx<'_>, _args: &[Bytes]) {
    ctx.integer(i64::try_from(ctx.shared.broker.numpat()).unwrap_or(i64::MAX));
}
