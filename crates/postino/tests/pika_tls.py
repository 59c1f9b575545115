"""AMQP over TLS with pika: a client certificate logs in with EXTERNAL, publishes with a
confirm and gets the message back, then waits for a line on stdin (the Rust test looks at
the connection meanwhile); EXTERNAL over plain TCP is refused (the server does not offer it).

Usage: pika_tls.py AMQPS_PORT AMQP_PORT CA_FILE CERT_FILE KEY_FILE
"""
import ssl
import sys

import pika

amqps, amqp, ca_file, cert_file, key_file = sys.argv[1:6]
context = ssl.create_default_context(cafile=ca_file)
context.load_cert_chain(cert_file, key_file)
parameters = pika.ConnectionParameters(
    host="127.0.0.1",
    port=int(amqps),
    ssl_options=pika.SSLOptions(context, "localhost"),
    credentials=pika.credentials.ExternalCredentials(),
    client_properties={"connection_name": "pika-tls"},
)
connection = pika.BlockingConnection(parameters)
channel = connection.channel()
channel.confirm_delivery()
channel.queue_declare("tls-orders")
channel.basic_publish("", "tls-orders", b"over tls")
_, _, body = channel.basic_get("tls-orders", auto_ack=True)
assert body == b"over tls", body
print("connected", flush=True)
sys.stdin.readline()
connection.close()

try:
    pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=int(amqp),
            credentials=pika.credentials.ExternalCredentials(),
        )
    )
    print("EXTERNAL was accepted over plain TCP")
    sys.exit(1)
except pika.exceptions.AMQPConnectionError as error:
    print("plain TCP refused EXTERNAL:", type(error).__name__)
print("tls ok", flush=True)
