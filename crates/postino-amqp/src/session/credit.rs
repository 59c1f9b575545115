//! A channel's shared prefetch (`basic.qos` with `global` set): the unsettled deliveries of all
//! the channel's consumers with manual acks count against one limit, as RabbitMQ's channel
//! limiter does. Each consumer's forwarder takes a unit before it sends a delivery; settling the
//! delivery's tag gives it back.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// 0: no channel-wide limit.
    limit: u16,
    /// Deliveries sent under the limit and not yet settled.
    in_flight: u64,
}

impl State {
    fn has_room(self) -> bool {
        self.limit == 0 || self.in_flight < u64::from(self.limit)
    }
}

#[derive(Debug)]
pub(super) struct ChannelCredit(watch::Sender<State>);

impl Default for ChannelCredit {
    fn default() -> Self {
        Self(watch::Sender::new(State::default()))
    }
}

impl ChannelCredit {
    /// Sets the channel-wide limit; deliveries waiting for room go on if it grew.
    pub(super) fn set_limit(&self, limit: u16) {
        self.0.send_modify(|state| state.limit = limit);
    }

    pub(super) fn limit(&self) -> u16 {
        self.0.borrow().limit
    }

    /// Waits for room under the limit and takes one unit of it.
    pub(super) async fn acquire(&self) {
        let mut changes = self.0.subscribe();
        loop {
            changes.borrow_and_update();
            let mut granted = false;
            self.0.send_if_modified(|state| {
                granted = state.has_room();
                if granted {
                    state.in_flight += 1;
                }
                granted
            });
            if granted || changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Gives back `settled` units.
    pub(super) fn release(&self, settled: u64) {
        if settled > 0 {
            self.0
                .send_modify(|state| state.in_flight = state.in_flight.saturating_sub(settled));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::ChannelCredit;

    #[tokio::test]
    async fn deliveries_wait_for_settlements_under_the_limit() {
        let credit = Arc::new(ChannelCredit::default());
        credit.set_limit(2);
        credit.acquire().await;
        credit.acquire().await;
        let waiting = tokio::spawn({
            let credit = Arc::clone(&credit);
            async move { credit.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a third delivery waits at a limit of 2"
        );
        credit.release(1);
        waiting
            .await
            .expect("the third delivery goes once one is settled");
        credit.set_limit(0);
        credit.acquire().await;
    }

    #[tokio::test]
    async fn raising_the_limit_lets_a_waiting_delivery_go() {
        let credit = Arc::new(ChannelCredit::default());
        credit.set_limit(1);
        credit.acquire().await;
        let waiting = tokio::spawn({
            let credit = Arc::clone(&credit);
            async move { credit.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        credit.set_limit(2);
        waiting.await.expect("room after the limit grew");
    }
}
