use cohort_object_api::Checkpointable;

struct Socket {
    fd: i32,
}

#[derive(Checkpointable)]
struct Connection {
    peer: String,
    #[checkpoint(skip)]
    socket: Socket,
}

fn main() {
    let _ = |c: Connection| (c.peer, c.socket.fd);
}
