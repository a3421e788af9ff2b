//! AWS SQS (or a compatible server) as the task queue. Long polling, up to 10 messages a
//! receive, a visibility heartbeat while a message is in work, DeleteMessageBatch after the
//! write, and a redrive policy into `<queue>-dlq` after `max_receive_count` receives.
//! Messages carry image refs, so both queues keep them no longer than the retention
//! (`MessageRetentionPeriod`, which SQS otherwise sets to 4 days).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Delivery, Depth, Queue, QueueError};
use crate::aws::{Endpoint, sdk_config};

#[derive(Debug, Clone)]
pub struct SqsOptions {
    pub queue: String,
    pub endpoint: Endpoint,
    /// Receives before SQS moves a message to the dead-letter queue.
    pub max_receive_count: u32,
    /// How long a received message stays invisible; the heartbeat renews it at half.
    pub visibility_timeout: Duration,
    /// How long the queue and its dead-letter queue keep a message: the fleet's
    /// retention. `None`: SQS's default (4 days).
    pub message_retention: Option<Duration>,
}

/// The shortest and longest `MessageRetentionPeriod` SQS accepts, in seconds.
const RETENTION_RANGE_SECS: (u64, u64) = (60, 14 * 24 * 3600);

impl SqsOptions {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}-dlq", self.queue)
    }

    /// The retention as SQS takes it: whole seconds from 60 (a shorter retention still
    /// leaves a message there a minute) to 14 days.
    pub fn message_retention_secs(&self) -> Option<u64> {
        let (min, max) = RETENTION_RANGE_SECS;
        self.message_retention.map(|r| r.as_secs().clamp(min, max))
    }
}

pub struct SqsQueue {
    client: Client,
    options: SqsOptions,
    url: String,
    dlq_url: String,
    /// Heartbeats of messages in work, by receipt handle.
    heartbeats: Mutex<HashMap<String, JoinHandle<()>>>,
    deletes: mpsc::Sender<DeleteRequest>,
    deleter: JoinHandle<()>,
}

fn lost(what: &str, e: impl std::error::Error) -> QueueError {
    QueueError::Connection(format!("{what}: {}", DisplayErrorContext(&e)))
}

impl SqsQueue {
    /// Creates the queue and its dead-letter queue if missing and sets the redrive policy.
    pub async fn connect(options: SqsOptions) -> Result<Self, QueueError> {
        options.endpoint.warn_if_plaintext("sqs");
        let client = Client::new(&sdk_config(&options.endpoint).await);
        let create = |name: String| {
            let client = client.clone();
            async move {
                let out = client
                    .create_queue()
                    .queue_name(&name)
                    .send()
                    .await
                    .map_err(|e| lost("creating a queue", e))?;
                out.queue_url
                    .ok_or_else(|| QueueError::Connection(format!("no URL for queue {name}")))
            }
        };
        let dlq_url = create(options.dead_letter_queue()).await?;
        let url = create(options.queue.clone()).await?;
        let dlq_arn = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| lost("reading the dead-letter queue", e))?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| QueueError::Connection("dead-letter queue has no ARN".into()))?;
        let retention = options.message_retention_secs().map(|s| s.to_string());
        if let Some(retention) = &retention {
            client
                .set_queue_attributes()
                .queue_url(&dlq_url)
                .attributes(QueueAttributeName::MessageRetentionPeriod, retention)
                .send()
                .await
                .map_err(|e| lost("setting the dead-letter queue's retention", e))?;
        }
        let redrive = format!(
            r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{}"}}"#,
            options.max_receive_count
        );
        let mut attributes = client
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                options.visibility_timeout.as_secs().max(1).to_string(),
            );
        if let Some(retention) = retention {
            attributes =
                attributes.attributes(QueueAttributeName::MessageRetentionPeriod, retention);
        }
        attributes
            .send()
            .await
            .map_err(|e| lost("setting the redrive policy", e))?;
        let (deletes, requests) = mpsc::channel(64);
        let deleter = tokio::spawn(run_deleter(client.clone(), url.clone(), requests));
        Ok(Self {
            client,
            options,
            url,
            dlq_url,
            heartbeats: Mutex::new(HashMap::new()),
            deletes,
            deleter,
        })
    }

    pub fn dead_letter_url(&self) -> &str {
        &self.dlq_url
    }

    /// Approximate visible messages in the queue at `url`, for tests and metrics.
    pub async fn approximate_count(&self, url: &str) -> Result<u64, QueueError> {
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| lost("reading queue attributes", e))?;
        Ok(attrs
            .attributes
            .and_then(|a| {
                a.get(&QueueAttributeName::ApproximateNumberOfMessages)
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0))
    }

    fn start_heartbeat(&self, receipt: String) {
        let (client, url) = (self.client.clone(), self.url.clone());
        let timeout = self.options.visibility_timeout.max(Duration::from_secs(2));
        let beat = tokio::spawn({
            let receipt = receipt.clone();
            async move {
                loop {
                    tokio::time::sleep(timeout / 2).await;
                    let renewed = client
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(&receipt)
                        .visibility_timeout(timeout.as_secs() as i32)
                        .send()
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(error = %DisplayErrorContext(&e), "visibility heartbeat failed");
                    }
                }
            }
        });
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(receipt, beat);
    }

    fn stop_heartbeat(&self, receipt: &str) -> Result<(), QueueError> {
        let beat = self
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(receipt);
        match beat {
            Some(beat) => {
                beat.abort();
                Ok(())
            }
            None => Err(QueueError::UnknownDelivery("(sqs receipt)".into())),
        }
    }

    /// Deletes a message through the batching deleter; returns once SQS confirmed it.
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let (done, result) = oneshot::channel();
        self.deletes
            .send((receipt.to_owned(), done))
            .await
            .map_err(|_| QueueError::Closed)?;
        result.await.map_err(|_| QueueError::Closed)?
    }
}

/// A message to delete and who waits for the outcome.
type DeleteRequest = (String, oneshot::Sender<Result<(), QueueError>>);

/// How long a delete waits for others to share its DeleteMessageBatch call.
const DELETE_LINGER: Duration = Duration::from_millis(20);

/// Deletes in DeleteMessageBatch calls of up to 10: acks that arrive together share one.
async fn run_deleter(client: Client, url: String, mut requests: mpsc::Receiver<DeleteRequest>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + DELETE_LINGER;
        while batch.len() < 10 {
            match tokio::time::timeout_at(deadline, requests.recv()).await {
                Ok(Some(request)) => batch.push(request),
                _ => break,
            }
        }
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, (receipt, _))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        let sent = client
            .delete_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) => {
                let failed: HashMap<String, String> =
                    out.failed.into_iter().map(|f| (f.id, f.code)).collect();
                for (i, (_, done)) in batch.into_iter().enumerate() {
                    let result = match failed.get(&i.to_string()) {
                        Some(code) => Err(QueueError::Connection(format!(
                            "SQS refused a delete: {code}"
                        ))),
                        None => Ok(()),
                    };
                    let _ = done.send(result);
                }
            }
            Err(e) => {
                let error = lost("deleting messages", e);
                for (_, done) in batch {
                    let _ = done.send(Err(error.clone()));
                }
            }
        }
    }
}

impl Drop for SqsQueue {
    fn drop(&mut self) {
        self.deleter.abort();
        for (_, beat) in self
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            beat.abort();
        }
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn publish(&self, body: Vec<u8>) -> Result<(), QueueError> {
        self.publish_batch(vec![body]).await
    }

    async fn publish_batch(&self, bodies: Vec<Vec<u8>>) -> Result<(), QueueError> {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let text = String::from_utf8(body.clone()).map_err(|_| {
                        QueueError::Connection("SQS message bodies must be UTF-8".into())
                    })?;
                    Ok(SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(text)
                        .build()
                        .expect("id and body are set"))
                })
                .collect::<Result<Vec<_>, QueueError>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| lost("publishing", e))?;
            if let Some(failed) = out.failed.first() {
                return Err(QueueError::Connection(format!(
                    "SQS refused a message: {}",
                    failed.code
                )));
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            // Whole seconds, at least one: zero would be a busy loop of short polls.
            .wait_time_seconds(wait.as_secs().clamp(1, 20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| lost("receiving", e))?;
        let mut deliveries = Vec::new();
        for message in out.messages.unwrap_or_default() {
            let (Some(receipt), Some(body)) = (message.receipt_handle, message.body) else {
                continue;
            };
            let attempt = message
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            self.start_heartbeat(receipt.clone());
            deliveries.push(Delivery {
                body: body.into_bytes(),
                handle: receipt,
                attempt,
            });
        }
        Ok(deliveries)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.stop_heartbeat(&delivery.handle)?;
        self.delete(&delivery.handle).await
    }

    async fn depth(&self) -> Result<Option<Depth>, QueueError> {
        Ok(Some(Depth {
            ready: self.approximate_count(&self.url).await?,
            dead_lettered: self.approximate_count(&self.dlq_url).await?,
        }))
    }

    async fn nack(&self, delivery: &Delivery, requeue: bool) -> Result<(), QueueError> {
        self.stop_heartbeat(&delivery.handle)?;
        if requeue {
            // Visible again now; the redrive policy dead-letters it after enough receives.
            return self
                .client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(&delivery.handle)
                .visibility_timeout(0)
                .send()
                .await
                .map(drop)
                .map_err(|e| lost("returning a message", e));
        }
        let body = String::from_utf8_lossy(&delivery.body).into_owned();
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| lost("dead-lettering", e))?;
        self.delete(&delivery.handle).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retention_period_is_the_retention_within_what_sqs_takes() {
        let options = |retention| SqsOptions {
            queue: "q".into(),
            endpoint: Endpoint::default(),
            max_receive_count: 5,
            visibility_timeout: Duration::from_secs(60),
            message_retention: retention,
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(options(secs(86_400)).message_retention_secs(), Some(86_400));
        assert_eq!(options(secs(8)).message_retention_secs(), Some(60));
        assert_eq!(
            options(secs(30 * 86_400)).message_retention_secs(),
            Some(14 * 86_400)
        );
        assert_eq!(options(None).message_retention_secs(), None);
    }
}
