"""Faust, with the one consumer knob it hard-codes made configurable: the fetch long-poll wait.

Faust's aiokafka driver always asks brokers to hold a fetch up to 1.5 s. A broker should answer as
soon as data arrives, but Tansu 0.6 does not when a fetch spans several partitions (measured:
median 0.48 s, max 1.23 s per message at 1.5 s, versus 11 ms and 45 ms at 100 ms), and that wait
lands straight on alert latency. These subclasses set aiokafka's ``fetch_max_wait_ms`` from config.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read by aiokafka when it starts
        return consumer


def app_with_fetch_wait(fetch_max_wait_ms: int) -> type[faust.App]:
    """A ``faust.App`` subclass whose Kafka consumer long-polls at most ``fetch_max_wait_ms``."""

    class ConsumerThread(_ConsumerThread):
        pass

    ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms

    class TunedConsumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        Consumer = TunedConsumer

    class App(faust.App):
        consumer_thread_class = ConsumerThread
        transport_class = Transport

        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    return App
