// The server re-exports the client library: the Redis-protocol replies and client it uses.
@_exported import ContinuumClient
