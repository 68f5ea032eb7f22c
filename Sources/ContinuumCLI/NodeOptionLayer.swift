import ArgumentParser
import ContinuumNIO
import Foundation

/// One source of a node's options, every one of them optional: a `--config` JSON file, or the
/// `CONTINUUM_*` environment. `continuum node` takes each option from its flag, else from the
/// environment, else from the file, else its default.
struct NodeOptionLayer: Decodable, Equatable {
    typealias Address = NodeServerConfiguration.Address

    var id: String?
    var listen: Address?
    var peers: [String: Address]?
    var resp: Address?
    var metrics: Address?
    var dataDirectory: String?
    var defaultPolicy: String?
    var cluster: String?
    var maxClockOffsetMilliseconds: Int?
    var faultInjection: Bool?
    var maxValueBytes: Int?
    var fsync: String?
    var electionTimeoutMilliseconds: Int?
    var lazyRelayDelayMilliseconds: Int?
    var metricsKeyNames: Bool?
    var clusterSecretFile: String?
    var insecure: Bool?
    var requirePassword: String?
    var aclFile: String?
    var tlsCertificateFile: String?
    var tlsKeyFile: String?
    var tlsCAFile: String?
    var maxClients: Int?
    var clientIdleTimeoutSeconds: Int?
    var clientOutputBufferBytes: Int?
    var protoMaxBulkLen: Int?
    var maxArguments: Int?
    var maxInlineBytes: Int?
    var maxPeerConnectionsPerAddress: Int?
    var logLevel: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case id, listen, peers, resp, metrics, dataDirectory, defaultPolicy, cluster, maxClockOffsetMilliseconds, faultInjection
        case maxValueBytes, fsync, electionTimeoutMilliseconds, lazyRelayDelayMilliseconds, metricsKeyNames, clusterSecretFile
        case insecure, requirePassword, aclFile, tlsCertificateFile, tlsKeyFile, tlsCAFile, maxClients, clientIdleTimeoutSeconds
        case clientOutputBufferBytes, protoMaxBulkLen, maxArguments, maxInlineBytes, maxPeerConnectionsPerAddress, logLevel
    }

    /// A configuration file is read whole; larger ones are refused.
    static let fileBytesMax = 1 << 20

    /// The layer a JSON configuration file holds. A key this build does not know is refused
    /// (a misspelt option would otherwise be ignored), as is a value of the wrong type.
    static func file(_ path: String) throws -> NodeOptionLayer {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        guard let size = (attributes?[.size] as? NSNumber)?.intValue else { throw ValidationError("cannot read --config \(path)") }
        guard size <= fileBytesMax else { throw ValidationError("--config \(path) is \(size) bytes; at most \(fileBytesMax)") }
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read --config \(path)") }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ValidationError("--config \(path) is not a JSON object")
        }
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        let unknown = object.keys.filter { !known.contains($0) }.sorted()
        guard unknown.isEmpty else {
            throw ValidationError("--config \(path): unknown key\(unknown.count == 1 ? "" : "s") \(unknown.joined(separator: ", ")); known: \(known.sorted().joined(separator: ", "))")
        }
        do {
            return try JSONDecoder().decode(NodeOptionLayer.self, from: data)
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.dataCorrupted(context) {
            throw ValidationError("--config \(path): '\(context.codingPath.map(\.stringValue).joined(separator: "."))': \(context.debugDescription)")
        } catch {
            throw ValidationError("--config \(path): \(error)")
        }
    }

    /// How each variable sets its option: `CONTINUUM_` and the flag's name in capitals, `-`
    /// as `_` (`--data-dir`: `CONTINUUM_DATA_DIR`). `CONTINUUM_PEERS` lists the peers,
    /// `id=host:port,id=host:port`; switches take `true`/`false` (or 1/0, yes/no, on/off).
    static func set(_ name: String, to value: String, in layer: inout NodeOptionLayer) throws -> Bool {
        switch name {
        case "CONTINUUM_ID": layer.id = value
        case "CONTINUUM_LISTEN": layer.listen = try address(value, name)
        case "CONTINUUM_PEERS": layer.peers = try peerList(value, name)
        case "CONTINUUM_RESP": layer.resp = try address(value, name)
        case "CONTINUUM_METRICS": layer.metrics = try address(value, name)
        case "CONTINUUM_DATA_DIR": layer.dataDirectory = value
        case "CONTINUUM_DEFAULT_POLICY": layer.defaultPolicy = value
        case "CONTINUUM_CLUSTER": layer.cluster = value
        case "CONTINUUM_MAX_CLOCK_OFFSET": layer.maxClockOffsetMilliseconds = try integer(value, name)
        case "CONTINUUM_FAULT_INJECTION": layer.faultInjection = try switchValue(value, name)
        case "CONTINUUM_MAX_VALUE_BYTES": layer.maxValueBytes = try integer(value, name)
        case "CONTINUUM_FSYNC": layer.fsync = value
        case "CONTINUUM_ELECTION_TIMEOUT": layer.electionTimeoutMilliseconds = try integer(value, name)
        case "CONTINUUM_LAZY_RELAY_DELAY": layer.lazyRelayDelayMilliseconds = try integer(value, name)
        case "CONTINUUM_METRICS_KEY_NAMES": layer.metricsKeyNames = try switchValue(value, name)
        case "CONTINUUM_CLUSTER_SECRET_FILE": layer.clusterSecretFile = value
        case "CONTINUUM_INSECURE": layer.insecure = try switchValue(value, name)
        case "CONTINUUM_REQUIREPASS": layer.requirePassword = value
        case "CONTINUUM_ACL_FILE": layer.aclFile = value
        case "CONTINUUM_TLS_CERT": layer.tlsCertificateFile = value
        case "CONTINUUM_TLS_KEY": layer.tlsKeyFile = value
        case "CONTINUUM_TLS_CA": layer.tlsCAFile = value
        case "CONTINUUM_MAXCLIENTS": layer.maxClients = try integer(value, name)
        case "CONTINUUM_TIMEOUT": layer.clientIdleTimeoutSeconds = try integer(value, name)
        case "CONTINUUM_CLIENT_OUTPUT_BUFFER_LIMIT": layer.clientOutputBufferBytes = try integer(value, name)
        case "CONTINUUM_PROTO_MAX_BULK_LEN": layer.protoMaxBulkLen = try integer(value, name)
        case "CONTINUUM_MAX_ARGUMENTS": layer.maxArguments = try integer(value, name)
        case "CONTINUUM_MAX_INLINE_BYTES": layer.maxInlineBytes = try integer(value, name)
        case "CONTINUUM_MAX_PEER_CONNECTIONS_PER_ADDRESS": layer.maxPeerConnectionsPerAddress = try integer(value, name)
        case "CONTINUUM_LOG_LEVEL": layer.logLevel = value
        default: return false
        }
        return true
    }

    /// `CONTINUUM_CONFIG` names the configuration file, as `--config` does.
    static let configVariable = "CONTINUUM_CONFIG"

    /// Variables with the prefix that other tools of the project read, not the node.
    static let otherTools: Set<String> = ["CONTINUUM_EXECUTABLE"]

    /// The layer the environment holds, and the `CONTINUUM_*` variables it does not know (the
    /// node warns of them: a misspelt one would otherwise be ignored). An empty value counts as
    /// unset. A value that does not parse is refused, naming the variable.
    static func environment(_ environment: [String: String]) throws -> (layer: NodeOptionLayer, unknown: [String]) {
        var layer = NodeOptionLayer()
        var unknown: [String] = []
        for (name, value) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix("CONTINUUM_") && !value.isEmpty {
            if try !set(name, to: value, in: &layer), name != configVariable, !otherTools.contains(name) { unknown.append(name) }
        }
        return (layer, unknown)
    }

    static func address(_ value: String, _ name: String) throws -> Address {
        do { return try Address(parsing: value) } catch { throw ValidationError("\(name)='\(value)' is not host:port") }
    }

    static func integer(_ value: String, _ name: String) throws -> Int {
        guard let number = Int(value.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("\(name)='\(value)' is not an integer") }
        return number
    }

    static func switchValue(_ value: String, _ name: String) throws -> Bool {
        switch value.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ValidationError("\(name)='\(value)' is not true or false")
        }
    }

    static func peerList(_ value: String, _ name: String) throws -> [String: Address] {
        var peers: [String: Address] = [:]
        for entry in value.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty else { throw ValidationError("\(name): '\(entry)' is not id=host:port") }
            guard peers[parts[0]] == nil else { throw ValidationError("\(name): \(parts[0]) is listed twice") }
            peers[parts[0]] = try address(parts[1], name)
        }
        return peers
    }

    /// This layer with `upper`'s options over it (an option `upper` sets wins).
    func overlaid(by upper: NodeOptionLayer) -> NodeOptionLayer {
        NodeOptionLayer(
            id: upper.id ?? id, listen: upper.listen ?? listen, peers: upper.peers ?? peers, resp: upper.resp ?? resp,
            metrics: upper.metrics ?? metrics, dataDirectory: upper.dataDirectory ?? dataDirectory,
            defaultPolicy: upper.defaultPolicy ?? defaultPolicy, cluster: upper.cluster ?? cluster,
            maxClockOffsetMilliseconds: upper.maxClockOffsetMilliseconds ?? maxClockOffsetMilliseconds,
            faultInjection: upper.faultInjection ?? faultInjection, maxValueBytes: upper.maxValueBytes ?? maxValueBytes,
            fsync: upper.fsync ?? fsync, electionTimeoutMilliseconds: upper.electionTimeoutMilliseconds ?? electionTimeoutMilliseconds,
            lazyRelayDelayMilliseconds: upper.lazyRelayDelayMilliseconds ?? lazyRelayDelayMilliseconds,
            metricsKeyNames: upper.metricsKeyNames ?? metricsKeyNames, clusterSecretFile: upper.clusterSecretFile ?? clusterSecretFile,
            insecure: upper.insecure ?? insecure, requirePassword: upper.requirePassword ?? requirePassword,
            aclFile: upper.aclFile ?? aclFile, tlsCertificateFile: upper.tlsCertificateFile ?? tlsCertificateFile,
            tlsKeyFile: upper.tlsKeyFile ?? tlsKeyFile, tlsCAFile: upper.tlsCAFile ?? tlsCAFile, maxClients: upper.maxClients ?? maxClients,
            clientIdleTimeoutSeconds: upper.clientIdleTimeoutSeconds ?? clientIdleTimeoutSeconds,
            clientOutputBufferBytes: upper.clientOutputBufferBytes ?? clientOutputBufferBytes,
            protoMaxBulkLen: upper.protoMaxBulkLen ?? protoMaxBulkLen, maxArguments: upper.maxArguments ?? maxArguments,
            maxInlineBytes: upper.maxInlineBytes ?? maxInlineBytes,
            maxPeerConnectionsPerAddress: upper.maxPeerConnectionsPerAddress ?? maxPeerConnectionsPerAddress,
            logLevel: upper.logLevel ?? logLevel)
    }
}
