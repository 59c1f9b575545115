//! Exchange and queue methods: declarations, bindings, purge, deletion.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, exchange, queue};
use amq_protocol::types::{FieldTable, ShortString};
use postino_core::{Action, Binding, CoreError, Destination, ExchangeSpec, QueueSpec, VirtualHost};

use postino_core::stream::{is_stream_queue, stream_queue_spec};

use super::{COMMAND_INVALID, Session, short};
use crate::convert::headers_from_table;

/// Deleting what does not exist succeeds, as in RabbitMQ: deletes are idempotent, so a client
/// can clean up without checking first.
fn absent_is_deleted(outcome: Result<(), CoreError>) -> Result<(), CoreError> {
    match outcome {
        Err(CoreError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

impl Session {
    /// A binding writes into its destination and reads from its source exchange.
    fn authorize_binding(
        &mut self,
        host: &VirtualHost,
        destination_kind: &str,
        destination: &ShortString,
        source: &ShortString,
    ) -> Result<(), CoreError> {
        self.authorize(host, Action::Write, destination_kind, destination.as_str())?;
        self.authorize(host, Action::Read, "exchange", source.as_str())
    }

    pub(super) fn on_exchange(
        &mut self,
        host: &Arc<VirtualHost>,
        id: u16,
        method: exchange::AMQPMethod,
    ) -> Result<(), CoreError> {
        match method {
            exchange::AMQPMethod::Declare(declare) => {
                let name = declare.exchange.as_str();
                if declare.passive {
                    if host.exchange_spec(name).is_none() {
                        return Err(CoreError::NotFound {
                            kind: "exchange",
                            name: name.to_owned(),
                        });
                    }
                } else {
                    self.authorize(host, Action::Configure, "exchange", name)?;
                    let arguments = headers_from_table(&declare.arguments);
                    let spec = ExchangeSpec::declared(
                        declare.kind.as_str().parse()?,
                        declare.durable,
                        declare.auto_delete,
                        declare.internal,
                        arguments,
                    );
                    host.declare_exchange(name, spec)?;
                }
                self.reply_unless_nowait(
                    declare.nowait,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                );
            }
            exchange::AMQPMethod::Delete(delete) => {
                self.authorize(
                    host,
                    Action::Configure,
                    "exchange",
                    delete.exchange.as_str(),
                )?;
                absent_is_deleted(
                    host.delete_exchange(delete.exchange.as_str(), delete.if_unused),
                )?;
                self.reply_unless_nowait(
                    delete.nowait,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                );
            }
            exchange::AMQPMethod::Bind(bind) => {
                self.authorize_binding(host, "exchange", &bind.destination, &bind.source)?;
                host.bind(exchange_binding(
                    &bind.source,
                    &bind.destination,
                    &bind.routing_key,
                    &bind.arguments,
                ))?;
                self.reply_unless_nowait(
                    bind.nowait,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                );
            }
            exchange::AMQPMethod::Unbind(unbind) => {
                self.authorize_binding(host, "exchange", &unbind.destination, &unbind.source)?;
                host.unbind(&exchange_binding(
                    &unbind.source,
                    &unbind.destination,
                    &unbind.routing_key,
                    &unbind.arguments,
                ))?;
                self.reply_unless_nowait(
                    unbind.nowait,
                    id,
                    AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                );
            }
            _ => self.close_channel(
                id,
                COMMAND_INVALID,
                "a client cannot send this method",
                40,
                0,
            ),
        }
        Ok(())
    }

    pub(super) async fn on_queue(
        &mut self,
        host: &Arc<VirtualHost>,
        id: u16,
        method: queue::AMQPMethod,
    ) -> Result<(), CoreError> {
        match method {
            queue::AMQPMethod::Declare(declare) => {
                let mut name = declare.queue.as_str().to_owned();
                let arguments = headers_from_table(&declare.arguments);
                let stream = host.stream(&name);
                let (message_count, consumer_count) = if let (true, Some(stream)) =
                    (declare.passive, &stream)
                {
                    (Self::stream_depth(stream).await?, 0)
                } else if is_stream_queue(&arguments) && !declare.passive {
                    self.authorize(host, Action::Configure, "queue", &name)?;
                    let spec = stream_queue_spec(
                        declare.durable,
                        declare.exclusive,
                        declare.auto_delete,
                        &arguments,
                    )?;
                    (Self::declare_stream(host, &name, spec).await?, 0)
                } else {
                    let handle = if declare.passive {
                        host.queue_for(&name, Some(self.connection))?
                    } else {
                        if name.is_empty() {
                            self.next_queue_name += 1;
                            name = format!("amq.gen-{}-{}", self.connection, self.next_queue_name);
                        } else if name.starts_with("amq.") {
                            return Err(CoreError::AccessRefused {
                                reason: format!("queue name '{name}' is reserved"),
                            });
                        }
                        self.authorize(host, Action::Configure, "queue", &name)?;
                        let spec = QueueSpec {
                            durable: declare.durable,
                            exclusive: declare.exclusive,
                            auto_delete: declare.auto_delete,
                            arguments,
                        };
                        host.declare_queue_for(&name, spec, Some(self.connection))?
                            .0
                    };
                    let stats = handle.stats().await?;
                    (stats.ready as u32, stats.consumers as u32)
                };
                self.reply_unless_nowait(
                    declare.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: short(&name),
                        message_count,
                        consumer_count,
                    })),
                );
            }
            queue::AMQPMethod::Bind(bind) => {
                self.authorize_binding(host, "queue", &bind.queue, &bind.exchange)?;
                host.bind(queue_binding(
                    &bind.exchange,
                    &bind.queue,
                    &bind.routing_key,
                    &bind.arguments,
                ))?;
                self.reply_unless_nowait(
                    bind.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                );
            }
            queue::AMQPMethod::Unbind(unbind) => {
                self.authorize_binding(host, "queue", &unbind.queue, &unbind.exchange)?;
                host.unbind(&queue_binding(
                    &unbind.exchange,
                    &unbind.queue,
                    &unbind.routing_key,
                    &unbind.arguments,
                ))?;
                self.send(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            queue::AMQPMethod::Delete(delete) => {
                let name = delete.queue.as_str();
                self.authorize(host, Action::Configure, "queue", name)?;
                let stream = host.stream(name);
                let message_count = match host.queue_for(name, Some(self.connection)) {
                    Err(CoreError::NotFound { .. }) if stream.is_some() => {
                        let stream = stream.expect("checked");
                        let depth = Self::stream_depth(&stream).await?;
                        absent_is_deleted(host.delete_stream(name).await)?;
                        depth
                    }
                    Ok(handle) => {
                        let stats = handle.stats().await?;
                        absent_is_deleted(
                            host.delete_queue_if(name, delete.if_unused, delete.if_empty)
                                .await,
                        )?;
                        stats.ready as u32
                    }
                    Err(CoreError::NotFound { .. }) => 0,
                    Err(error) => return Err(error),
                };
                self.reply_unless_nowait(
                    delete.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count,
                    })),
                );
            }
            queue::AMQPMethod::Purge(purge) => {
                self.authorize(host, Action::Read, "queue", purge.queue.as_str())?;
                let purged = host
                    .queue_for(purge.queue.as_str(), Some(self.connection))?
                    .purge()
                    .await?;
                self.reply_unless_nowait(
                    purge.nowait,
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: purged as u32,
                    })),
                );
            }
            _ => self.close_channel(
                id,
                COMMAND_INVALID,
                "a client cannot send this method",
                50,
                0,
            ),
        }
        Ok(())
    }
}

fn queue_binding(
    exchange: &ShortString,
    queue: &ShortString,
    key: &ShortString,
    arguments: &FieldTable,
) -> Binding {
    Binding {
        source: exchange.as_str().to_owned(),
        destination: Destination::Queue(queue.as_str().to_owned()),
        key: key.as_str().to_owned(),
        arguments: headers_from_table(arguments),
    }
}

fn exchange_binding(
    source: &ShortString,
    destination: &ShortString,
    key: &ShortString,
    arguments: &FieldTable,
) -> Binding {
    Binding {
        source: source.as_str().to_owned(),
        destination: Destination::Exchange(destination.as_str().to_owned()),
        key: key.as_str().to_owned(),
        arguments: headers_from_table(arguments),
    }
}
