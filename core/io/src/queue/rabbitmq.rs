//! RabbitMQ as the task queue (lapin). A durable quorum queue with a delivery limit and a
//! dead-letter exchange into `<queue>.dlq`; persistent messages published with confirms;
//! manual acks; prefetch bounded by the worker's in-flight budget. A lost connection is
//! re-established on the next call, with the topology declared again.
//!
//! Messages carry image refs, so none waits longer than the retention: each is published
//! with that expiration, and the dead-letter queue drops what it holds after as long
//! (`x-message-ttl`, counted from the dead-lettering: RabbitMQ clears a message's own
//! expiration when it dead-letters it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use super::{Delivery, Depth, Queue, QueueError};

#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// `amqp://` or `amqps://` URL of the broker (with vhost).
    pub url: String,
    pub queue: String,
    pub delivery_limit: u32,
    /// Unacked messages the broker hands this consumer at most.
    pub prefetch: u16,
    /// How long a message may wait in the queue, and again in the dead-letter queue: the
    /// fleet's retention. `None`: as long as it takes (benchmarks).
    pub message_ttl: Option<Duration>,
}

impl RabbitOptions {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// The TTL in milliseconds, as RabbitMQ takes it: at least 1, and at most what a
    /// signed 32-bit argument holds (24.8 days; a longer retention waits that long).
    pub fn message_ttl_ms(&self) -> Option<i32> {
        self.message_ttl
            .map(|ttl| ttl.as_millis().clamp(1, i32::MAX as u128) as i32)
    }

    fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }
}

/// A connection with its two channels: one publishes with confirms, one consumes.
struct Link {
    generation: u64,
    _connection: Connection,
    publish: Channel,
    consume: Channel,
}

pub struct RabbitQueue {
    options: RabbitOptions,
    link: tokio::sync::Mutex<Option<Link>>,
    /// The consumer, its channel and the link generation it belongs to.
    consumer: tokio::sync::Mutex<Option<(u64, Channel, Consumer)>>,
    /// Ackers of unsettled deliveries, by handle.
    pending: Mutex<HashMap<String, Acker>>,
    generations: AtomicU64,
}

fn lost(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Connection(format!("{what}: {e}"))
}

/// A failed queue declaration. RabbitMQ refuses to redeclare a queue with other
/// arguments (PRECONDITION_FAILED, 406): that is for an operator to settle, not a retry.
fn declaring(queue: &str, e: lapin::Error) -> QueueError {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => {
            QueueError::Declaration(format!(
                "RabbitMQ holds the queue {queue} with other arguments than this tagfleet \
                 declares ({}): it was declared by an older version (dead-letter queues had \
                 no message TTL before) or with another retention. Move or drop its \
                 messages, delete it (rabbitmqctl delete_queue {queue}) and start again",
                amqp.get_message()
            ))
        }
        _ => lost(&format!("declaring the queue {queue}"), e),
    }
}

impl RabbitQueue {
    /// Connects and declares the topology; fails if the broker cannot be reached now.
    pub async fn connect(options: RabbitOptions) -> Result<Self, QueueError> {
        if crate::aws::is_plaintext_remote(&options.url) {
            tracing::warn!("AMQP connection to a host outside loopback is not TLS (use amqps://)");
        }
        let queue = Self {
            options,
            link: tokio::sync::Mutex::new(None),
            consumer: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        };
        queue.channels().await?;
        Ok(queue)
    }

    pub fn options(&self) -> &RabbitOptions {
        &self.options
    }

    /// The publish and consume channels of a live link, connecting first if needed.
    async fn channels(&self) -> Result<(u64, Channel, Channel), QueueError> {
        let mut link = self.link.lock().await;
        if let Some(l) = link
            .as_ref()
            .filter(|l| l.publish.status().connected() && l.consume.status().connected())
        {
            return Ok((l.generation, l.publish.clone(), l.consume.clone()));
        }
        *link = None;
        let connection = Connection::connect(&self.options.url, ConnectionProperties::default())
            .await
            .map_err(|e| lost("connecting to RabbitMQ", e))?;
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| lost("opening a channel", e))?;
        let consume = connection
            .create_channel()
            .await
            .map_err(|e| lost("opening a channel", e))?;
        self.declare(&publish).await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lost("enabling confirms", e))?;
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        if generation > 1 {
            tracing::info!(generation, "reconnected to RabbitMQ");
        }
        *link = Some(Link {
            generation,
            _connection: connection,
            publish: publish.clone(),
            consume: consume.clone(),
        });
        Ok((generation, publish, consume))
    }

    async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let o = &self.options;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .exchange_declare(
                o.dead_letter_exchange().as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| lost("declaring the dead-letter exchange", e))?;
        let mut dead_letter_args = quorum.clone();
        if let Some(ttl) = o.message_ttl_ms() {
            dead_letter_args.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl));
        }
        channel
            .queue_declare(
                o.dead_letter_queue().as_str().into(),
                durable,
                dead_letter_args,
            )
            .await
            .map_err(|e| declaring(&o.dead_letter_queue(), e))?;
        channel
            .queue_bind(
                o.dead_letter_queue().as_str().into(),
                o.dead_letter_exchange().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lost("binding the dead-letter queue", e))?;
        let mut args = quorum;
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(o.delivery_limit as i32),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(o.dead_letter_exchange().as_str().into()),
        );
        channel
            .queue_declare(o.queue.as_str().into(), durable, args)
            .await
            .map_err(|e| declaring(&o.queue, e))?;
        Ok(())
    }

    /// Deletes the queue and its dead-letter queue with their messages (benchmarks and
    /// tests clean up with it).
    pub async fn delete(&self) -> Result<(), QueueError> {
        let (_, publish, _) = self.channels().await?;
        for queue in [self.options.queue.clone(), self.options.dead_letter_queue()] {
            publish
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| lost("deleting a queue", e))?;
        }
        Ok(())
    }

    /// Messages ready in `queue` (a passive declare), for tests and metrics.
    pub async fn message_count(&self, queue: &str) -> Result<u32, QueueError> {
        let (_, publish, _) = self.channels().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = publish
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map_err(|e| lost("inspecting a queue", e))?;
        Ok(q.message_count())
    }

    async fn forget_link(&self, generation: u64) {
        let mut link = self.link.lock().await;
        if link.as_ref().is_some_and(|l| l.generation == generation) {
            *link = None;
        }
    }

    fn settle(&self, delivery: &Delivery) -> Result<Acker, QueueError> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&delivery.handle)
            .ok_or_else(|| QueueError::UnknownDelivery(delivery.handle.clone()))
    }

    fn accept(&self, generation: u64, d: lapin::message::Delivery) -> Delivery {
        let count = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned())
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => Some(n as u32),
                AMQPValue::LongInt(n) => Some(n as u32),
                AMQPValue::LongUInt(n) => Some(n),
                _ => None,
            });
        let attempt = count.map_or(if d.redelivered { 2 } else { 1 }, |n| n + 1);
        let handle = format!("{generation}:{}", d.delivery_tag);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.clone(), d.acker);
        Delivery {
            body: d.data,
            handle,
            attempt,
        }
    }
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), QueueError> {
        self.publish_batch(vec![body]).await
    }

    /// Publishes every message, then waits for all their confirms: one round trip of
    /// latency for the batch instead of one per message.
    async fn publish_batch(&self, bodies: Vec<Vec<u8>>) -> Result<(), QueueError> {
        let (generation, publish, _) = self.channels().await?;
        let mut persistent = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(ttl) = self.options.message_ttl_ms() {
            // Per message, not `x-message-ttl` on the task queue: existing task queues
            // keep their declared arguments, so an upgrade needs no new queue.
            persistent = persistent.with_expiration(ttl.to_string().into());
        }
        let result = async {
            let mut confirms = Vec::with_capacity(bodies.len());
            for body in &bodies {
                let confirm = publish
                    .basic_publish(
                        "".into(),
                        self.options.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        persistent.clone(),
                    )
                    .await?;
                confirms.push(confirm);
            }
            let mut all_acked = true;
            for confirm in confirms {
                all_acked &= confirm.await?.is_ack();
            }
            Ok::<_, lapin::Error>(all_acked)
        }
        .await;
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(QueueError::Connection(
                "the broker refused a message (nack)".into(),
            )),
            Err(e) => {
                self.forget_link(generation).await;
                Err(lost("publishing", e))
            }
        }
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut consumer = self.consumer.lock().await;
        // A dead connection does not always end the consumer stream: check the channel.
        let dead = consumer
            .as_ref()
            .filter(|(_, channel, _)| !channel.status().connected())
            .map(|(g, _, _)| *g);
        if let Some(generation) = dead {
            *consumer = None;
            self.forget_link(generation).await;
        }
        if consumer.is_none() {
            let (generation, _, consume) = self.channels().await?;
            consume
                .basic_qos(self.options.prefetch.max(1), BasicQosOptions::default())
                .await
                .map_err(|e| lost("setting prefetch", e))?;
            let stream = consume
                .basic_consume(
                    self.options.queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| lost("starting to consume", e))?;
            *consumer = Some((generation, consume, stream));
        }
        let (generation, _, stream) = consumer.as_mut().expect("set above");
        let generation = *generation;
        let mut out = Vec::new();
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => return Ok(out),
            Ok(Some(Ok(d))) => out.push(self.accept(generation, d)),
            Ok(Some(Err(e))) => {
                *consumer = None;
                self.forget_link(generation).await;
                return Err(lost("consuming", e));
            }
            Ok(None) => {
                *consumer = None;
                self.forget_link(generation).await;
                return Err(QueueError::Connection(
                    "the broker closed the consumer".into(),
                ));
            }
        }
        // Take what has already arrived, without waiting again.
        while out.len() < max {
            match futures_util::FutureExt::now_or_never(stream.next()) {
                Some(Some(Ok(d))) => out.push(self.accept(generation, d)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let acker = self.settle(delivery)?;
        acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| lost("acking", e))
    }

    async fn stop_receiving(&self) -> Result<(), QueueError> {
        let Some((generation, channel, mut stream)) = self.consumer.lock().await.take() else {
            return Ok(());
        };
        if !channel.status().connected() {
            // Nothing to cancel: the broker returned everything with the connection.
            self.forget_link(generation).await;
            return Ok(());
        }
        channel
            .basic_cancel(stream.tag(), BasicCancelOptions::default())
            .await
            .map_err(|e| lost("cancelling the consumer", e))?;
        // Pushed before the cancel and never received: back to the queue now.
        let mut returned = 0;
        while let Some(Some(Ok(d))) = futures_util::FutureExt::now_or_never(stream.next()) {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            d.acker
                .nack(requeue)
                .await
                .map_err(|e| lost("returning an unstarted message", e))?;
            returned += 1;
        }
        tracing::info!(returned, "stopped consuming");
        Ok(())
    }

    async fn depth(&self) -> Result<Option<Depth>, QueueError> {
        let ready = self.message_count(&self.options.queue).await?;
        let dead = self
            .message_count(&self.options.dead_letter_queue())
            .await?;
        Ok(Some(Depth {
            ready: ready.into(),
            dead_lettered: dead.into(),
        }))
    }

    async fn nack(&self, delivery: &Delivery, requeue: bool) -> Result<(), QueueError> {
        let acker = self.settle(delivery)?;
        let options = BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        };
        acker
            .nack(options)
            .await
            .map(drop)
            .map_err(|e| lost("nacking", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_ttl_is_the_retention_in_milliseconds_within_what_rabbitmq_takes() {
        let options = |ttl| RabbitOptions {
            url: "amqp://localhost".into(),
            queue: "q".into(),
            delivery_limit: 5,
            prefetch: 1,
            message_ttl: ttl,
        };
        let hours = |h: u64| Some(Duration::from_secs(h * 3600));
        assert_eq!(options(hours(24)).message_ttl_ms(), Some(86_400_000));
        assert_eq!(options(hours(24 * 365)).message_ttl_ms(), Some(i32::MAX));
        assert_eq!(options(Some(Duration::ZERO)).message_ttl_ms(), Some(1));
        assert_eq!(options(None).message_ttl_ms(), None);
    }
}
