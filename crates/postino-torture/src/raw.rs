//! AMQP 0-9-1 client frames written by hand, for clients no library would be: ones that open
//! a connection and then never read, never send heartbeats, or never finish the handshake.

/// The protocol header.
pub const HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// A method frame on `channel`: class, method, and the encoded arguments.
fn method(channel: u16, class: u16, method: u16, arguments: &[u8]) -> Vec<u8> {
    let mut payload = [class.to_be_bytes(), method.to_be_bytes()].concat();
    payload.extend_from_slice(arguments);
    let mut frame = vec![1];
    frame.extend(channel.to_be_bytes());
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend(payload);
    frame.push(0xce);
    frame
}

fn short(text: &str) -> Vec<u8> {
    [&[text.len() as u8], text.as_bytes()].concat()
}

/// The client half of a handshake, written at once: the header, `start-ok` (PLAIN
/// guest/guest), `tune-ok` with `heartbeat_s` and `open` of `/`.
pub fn handshake(heartbeat_s: u16) -> Vec<u8> {
    let response = b"\0guest\0guest";
    let mut start_ok = 0u32.to_be_bytes().to_vec();
    start_ok.extend(short("PLAIN"));
    start_ok.extend((response.len() as u32).to_be_bytes());
    start_ok.extend(response);
    start_ok.extend(short("en_US"));
    let tune_ok = [
        16u16.to_be_bytes().as_slice(),
        &131_072u32.to_be_bytes(),
        &heartbeat_s.to_be_bytes(),
    ]
    .concat();
    let open = [short("/"), short(""), vec![0]].concat();
    [
        HEADER.to_vec(),
        method(0, 10, 11, &start_ok),
        method(0, 10, 31, &tune_ok),
        method(0, 10, 40, &open),
    ]
    .concat()
}

/// `channel.open` of channel 1 and a `basic.consume` of `queue` on it, without a prefetch
/// limit; `no_ack` as given.
pub fn consume(queue: &str, no_ack: bool) -> Vec<u8> {
    let mut arguments = 0u16.to_be_bytes().to_vec();
    arguments.extend(short(queue));
    arguments.extend(short(""));
    arguments.push(u8::from(no_ack) << 1);
    arguments.extend(0u32.to_be_bytes());
    [method(1, 20, 10, &short("")), method(1, 60, 20, &arguments)].concat()
}
