"""The six RabbitMQ tutorials, run with pika against the server at AMQP port argv[1].

Each tutorial asserts what the tutorial's reader would see; any failure raises and the process
exits non-zero. Run by crates/postino/tests/pika.rs against the real postino binary.
"""

import sys
import threading
import uuid

import pika

PORT = int(sys.argv[1])


def connect():
    params = pika.ConnectionParameters(host="127.0.0.1", port=PORT, heartbeat=30)
    return pika.BlockingConnection(params)


def hello_world():
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue="hello")
    channel.basic_publish(exchange="", routing_key="hello", body=b"Hello World!")
    method, _, body = channel.basic_get(queue="hello", auto_ack=True)
    assert body == b"Hello World!", body
    connection.close()


def work_queues():
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue="task_queue", durable=True)
    for index in range(6):
        channel.basic_publish(
            exchange="",
            routing_key="task_queue",
            body=f"task {index}".encode(),
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )
    channel.basic_qos(prefetch_count=1)
    done = []

    def callback(ch, method, properties, body):
        done.append(body)
        ch.basic_ack(delivery_tag=method.delivery_tag)
        if len(done) == 6:
            ch.stop_consuming()

    channel.basic_consume(queue="task_queue", on_message_callback=callback)
    channel.start_consuming()
    assert done == [f"task {index}".encode() for index in range(6)], done
    connection.close()


def receive_all(channel, queue, count):
    received = []
    while len(received) < count:
        method, _, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            channel.connection.sleep(0.01)
            continue
        received.append((method.routing_key, body))
    return received


def publish_subscribe():
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare(exchange="logs", exchange_type="fanout")
    queues = []
    for _ in range(2):
        result = channel.queue_declare(queue="", exclusive=True)
        channel.queue_bind(exchange="logs", queue=result.method.queue)
        queues.append(result.method.queue)
    channel.basic_publish(exchange="logs", routing_key="", body=b"info: hello")
    for queue in queues:
        assert receive_all(channel, queue, 1) == [("", b"info: hello")]
    connection.close()


def routing():
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare(exchange="direct_logs", exchange_type="direct")
    errors = channel.queue_declare(queue="", exclusive=True).method.queue
    everything = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(exchange="direct_logs", queue=errors, routing_key="error")
    for severity in ["info", "warning", "error"]:
        channel.queue_bind(exchange="direct_logs", queue=everything, routing_key=severity)
    for severity in ["info", "warning", "error"]:
        channel.basic_publish(exchange="direct_logs", routing_key=severity, body=severity.encode())
    assert receive_all(channel, errors, 1) == [("error", b"error")]
    assert [key for key, _ in receive_all(channel, everything, 3)] == ["info", "warning", "error"]
    connection.close()


def topics():
    connection = connect()
    channel = connection.channel()
    channel.exchange_declare(exchange="topic_logs", exchange_type="topic")
    kern = channel.queue_declare(queue="", exclusive=True).method.queue
    critical = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(exchange="topic_logs", queue=kern, routing_key="kern.*")
    channel.queue_bind(exchange="topic_logs", queue=critical, routing_key="*.critical")
    for key in ["kern.critical", "kern.info", "app.critical", "app.info"]:
        channel.basic_publish(exchange="topic_logs", routing_key=key, body=key.encode())
    assert [key for key, _ in receive_all(channel, kern, 2)] == ["kern.critical", "kern.info"]
    assert [key for key, _ in receive_all(channel, critical, 2)] == ["kern.critical", "app.critical"]
    connection.close()


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def rpc():
    ready = threading.Event()

    def server():
        connection = connect()
        channel = connection.channel()
        channel.queue_declare(queue="rpc_queue")

        def on_request(ch, method, props, body):
            response = fib(int(body))
            ch.basic_publish(
                exchange="",
                routing_key=props.reply_to,
                properties=pika.BasicProperties(correlation_id=props.correlation_id),
                body=str(response).encode(),
            )
            ch.basic_ack(delivery_tag=method.delivery_tag)
            ch.stop_consuming()

        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue="rpc_queue", on_message_callback=on_request)
        ready.set()
        channel.start_consuming()
        connection.close()

    thread = threading.Thread(target=server)
    thread.start()
    ready.wait(30)
    connection = connect()
    channel = connection.channel()
    callback_queue = channel.queue_declare(queue="", exclusive=True).method.queue
    correlation_id = str(uuid.uuid4())
    response = []

    def on_response(ch, method, props, body):
        if props.correlation_id == correlation_id:
            response.append(int(body))
            ch.stop_consuming()

    channel.basic_consume(queue=callback_queue, on_message_callback=on_response, auto_ack=True)
    channel.basic_publish(
        exchange="",
        routing_key="rpc_queue",
        properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=correlation_id),
        body=b"10",
    )
    channel.start_consuming()
    assert response == [55], response
    connection.close()
    thread.join(30)


TUTORIALS = [hello_world, work_queues, publish_subscribe, routing, topics, rpc]

for tutorial in TUTORIALS:
    tutorial()
    print(f"{tutorial.__name__}: ok", flush=True)
print(f"{len(TUTORIALS)} tutorials passed")
