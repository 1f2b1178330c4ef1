"""SQLiteBroker: the embedded default broker, one SQLite file shared by processes on one host.

Every message is one row of ``taskflow_messages``. A row is in exactly one
state at a time, told apart by its columns:

* ready or delayed: ``lease_owner`` and ``dead_at`` are NULL; delayed while
  ``ready_at`` is in the future;
* in flight: ``lease_owner`` names the broker instance holding it and
  ``lease_expires`` says until when;
* dead: ``dead_at`` is set, with the ``reason`` and ``dead_until`` (the TTL).

Every change of state runs in a ``BEGIN IMMEDIATE`` transaction, so
concurrent processes cannot interleave; a batch is leased by one ``UPDATE …
RETURNING`` that sets the owner and expiry and counts the delivery. A busy
database is waited for (``busy_timeout``), then retried with backoff. Commits
that store a sent message are synced to disk (``synchronous=FULL``) unless
the broker is built with ``synchronous="NORMAL"``; acks, claims, renewals and
reaping are committed without waiting for the disk (a power cut undoing the
last of them only runs those messages again, and the next synced commit
syncs them too, the write-ahead log being synced as a whole).

Clocks: every time in the table (delays, leases, dead-letter TTLs) is read
inside the statement from the host clock (``_clock``): the wall clock's time
at the pace of the host's monotonic clock, anchored once per boot in the file,
so every process on the host reads the same time and a step of the wall clock
(NTP, ``date -s``) moves nothing: it neither expires every lease at once nor
keeps a dead worker's messages, or makes ready messages look delayed, for the
length of the step. What the broker assumes: one host (every process reads
the same monotonic clock, as they share the file's locks anyway); a message
with an ``eta`` runs when the host clock reaches it, so an ``eta`` is
converted to a delay by the sender's clock at ``send`` time. Leases are
fenced by ownership: a worker whose heartbeat is late, but whose messages no
reaper of another process has taken back yet, still renews and acks them
(nothing is lost or run twice); a process never reaps its own leases, since
its heartbeat thread renews them for as long as it lives.

Threads (started by ``connect``, in producers and workers alike):

* Statements of the event loop's side (send, claim, settle, stats) run on one
  connection in a worker thread, one at a time (an anyio ``CapacityLimiter``
  of 1), so the loop never blocks. Sends, claims and settlements (ack,
  retry, dead letter, requeue) that arrive while a transaction runs are
  committed together in the next one (group commit): 100 tasks sending at
  once share a sync to disk, and a consumer's next claim shares one with the
  acks of its last batch.
* A heartbeat thread renews, every ``visibility_timeout / 3`` seconds, the
  lease of every message this broker holds, with one statement. It needs
  neither the event loop nor the GIL for long, so a blocked loop or a long
  sync actor does not let healthy work expire.
* A watcher thread polls idle queues (see Polling below).
* A reaper thread, every ``reaper_interval`` seconds, returns expired leases
  to ready and deletes dead letters past their TTL. It first checks with a
  read (no lock, thanks to WAL) and only writes when there is work, so an idle
  reaper costs one index lookup per interval.

Delivery counts: ``deliveries`` goes up when a message is leased, in the
same statement, so a message that kills its worker is counted before it runs
and is dead-lettered past ``max_deliveries``. Messages handed back unseen
(the unstarted rest of a batch) get their count back. The reaper also counts
lease expiries; a message whose lease expired twice is a suspect. Suspects
are never leased with fresh messages, only in groups of suspects, and their
consumer fetches nothing more until the group is settled; a group may hold
half the prefetch, halving again with each further expiry of its members,
and a message about to get its last delivery is leased alone. So a
worker-killing message stops taking fresh messages down with it, is cornered
within log2(prefetch) more crashes, and innocent suspects (the neighbours of
a killer, or the work of a worker killed twice by an operator) still run
side by side rather than one at a time (see ``SUSPECT_EXPIRIES``).

Polling: a consumer that runs out of work looks again after 5 ms, then
doubles the wait up to ``poll_interval`` (50 ms by default), each look a
cheap read (no write lock) that also tells when the next delayed message is
due. Once at ``poll_interval`` it hands the polling to a watcher thread and
sleeps: the watcher does one index lookup per idle queue per interval from
its own connection and wakes the consumer only when a message is due. A send
in the same process wakes its consumers at once. So an idle worker picks up a
message sent by another process within ~50 ms, and its event loop wakes about
once a second: it costs well under 1 % of a core.
"""

from taskflow.brokers.sqlite._broker import SQLiteBroker

__all__ = ["SQLiteBroker"]
