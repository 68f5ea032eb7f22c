// One import for client applications: the CRDTs, policies, receipts and errors of ContinuumCore
// and the CRDT operations of ContinuumProtocols.
@_exported import ContinuumCore
@_exported import ContinuumProtocols
