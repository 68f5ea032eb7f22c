// One import for applications: the CRDTs, policies and errors of ContinuumCore and the protocol
// types the runtime's API mentions (CRDT operations of linearizable registers, node names).
@_exported import ContinuumCore
@_exported import ContinuumProtocols
