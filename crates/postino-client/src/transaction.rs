//! Transactions: puts, publishes and settlements the broker applies together at commit, or
//! not at all.

use postino_grpc::proto::{
    BeginRequest, NackRequest, PublishRequest, PutRequest, SettleRequest, TransactionRequest,
};
use postino_grpc::{MAX_MESSAGE_BYTES, TransactionsClient};
use tonic::transport::Channel;

use crate::pubsub::pubsub;
use crate::queue::queues;
use crate::{Client, Delivery, Error, Message, SyncMode};

fn transactions(channel: Channel) -> TransactionsClient<Channel> {
    TransactionsClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// An open transaction (the broker rolls it back after a minute without a call naming it).
/// Dropping it without [`Transaction::commit`] leaves it to that timeout.
///
/// ```
/// # postino_client::examples::run(|client| async move {
/// let orders = client.queue("orders");
/// orders.declare().await?;
/// client.queue("audit").declare().await?;
/// let placing = client.begin().await?;
/// placing.put("orders", "o-1").await?;
/// placing.put("audit", "o-1 placed").await?;
/// assert!(orders.poll().await?.is_none(), "nothing before the commit");
/// assert_eq!(placing.commit().await?, [1, 1]);
///
/// let order = orders.poll().await?.expect("o-1");
/// let shipping = client.begin().await?;
/// shipping.ack(&order).await?;
/// shipping.put("audit", "o-1 shipped").await?;
/// shipping.rollback().await?;
/// order.ack().await?; // still held: the rollback took back the transaction's ack
/// # Ok(()) });
/// ```
#[derive(Debug)]
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction {
    client: Client,
    id: String,
}

impl Transaction {
    pub(crate) async fn begin(client: Client) -> Result<Self, Error> {
        let request = BeginRequest {
            vhost: client.vhost(),
            timeout_ms: None,
        };
        let reply = crate::call!(&client, transactions, begin, request)?;
        Ok(Self {
            client,
            id: reply.transaction,
        })
    }

    fn named(&self) -> TransactionRequest {
        TransactionRequest {
            vhost: self.client.vhost(),
            transaction: self.id.clone(),
        }
    }

    /// Puts `message` into `queue` at commit.
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing queue (now, not at commit).
    pub async fn put(&self, queue: &str, message: impl Into<Message>) -> Result<(), Error> {
        let request = PutRequest {
            vhost: self.client.vhost(),
            queue: queue.to_owned(),
            message: Some(message.into().0),
            sync: SyncMode::Stored.into(),
            reply_timeout_ms: None,
            transaction: self.id.clone(),
        };
        let client = &self.client;
        crate::call!(&client, queues, put, request)?;
        Ok(())
    }

    /// Publishes `event` on `exchange` with `topic` at commit.
    ///
    /// # Errors
    /// The broker's refusal (no permission, unknown transaction).
    pub async fn publish(
        &self,
        exchange: &str,
        topic: &str,
        event: impl Into<Message>,
    ) -> Result<(), Error> {
        let request = PublishRequest {
            vhost: self.client.vhost(),
            exchange: exchange.to_owned(),
            routing_key: topic.to_owned(),
            message: Some(event.into().0),
            sync: SyncMode::Stored.into(),
            transaction: self.id.clone(),
        };
        let client = &self.client;
        crate::call!(&client, pubsub, publish, request)?;
        Ok(())
    }

    /// Acknowledges `delivery` at commit.
    ///
    /// # Errors
    /// The broker's refusal (no permission, unknown transaction).
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let request = SettleRequest {
            vhost: self.client.vhost(),
            queue: delivery.queue().to_owned(),
            delivery_ids: vec![delivery.id()],
            transaction: self.id.clone(),
        };
        let client = &self.client;
        crate::call!(&client, queues, ack, request)?;
        Ok(())
    }

    /// Gives `delivery` back at commit: to its queue (`requeue`), or to the dead letters.
    ///
    /// # Errors
    /// The broker's refusal (no permission, unknown transaction).
    pub async fn nack(&self, delivery: &Delivery, requeue: bool) -> Result<(), Error> {
        let request = NackRequest {
            vhost: self.client.vhost(),
            queue: delivery.queue().to_owned(),
            delivery_ids: vec![delivery.id()],
            requeue,
            transaction: self.id.clone(),
        };
        let client = &self.client;
        crate::call!(&client, queues, nack, request)?;
        Ok(())
    }

    /// Applies everything, durably; answers how many queues each put and publish reached.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` when a part was refused (nothing applied); `NOT_FOUND` when the
    /// transaction timed out.
    pub async fn commit(self) -> Result<Vec<u32>, Error> {
        let request = self.named();
        let client = &self.client;
        let reply = crate::call!(&client, transactions, commit, request)?;
        Ok(reply.routed)
    }

    /// Drops everything.
    ///
    /// # Errors
    /// `NOT_FOUND` when the transaction timed out (it was rolled back then).
    pub async fn rollback(self) -> Result<(), Error> {
        let request = self.named();
        let client = &self.client;
        crate::call!(&client, transactions, rollback, request)?;
        Ok(())
    }
}
