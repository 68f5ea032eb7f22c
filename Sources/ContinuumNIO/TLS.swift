import ContinuumCore
import Crypto
import Foundation
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// A node's TLS material, as PEM files: its certificate, its private key, and the CA that signs
/// every node's certificate (and that peers and clients trust).
public struct TLSFiles: Sendable, Codable, Equatable {
    public var certificate: String
    public var key: String
    public var ca: String

    public init(certificate: String, key: String, ca: String) {
        self.certificate = certificate
        self.key = key
        self.ca = ca
    }
}

/// The TLS contexts a node serves with, built once from its files:
/// - `server`: the Redis and metrics ports (server certificate; clients are not asked for one —
///   they sign in with ACL users);
/// - `peerServer` and `peerClient`: the peer port, mutual TLS. Each side presents its node
///   certificate and checks the other's against the CA; a dialer also checks that the
///   listener's certificate names the node it calls (`n2` as a DNS name), and a listener that
///   the dialer's certificate names the node its hello claims (`NodeTLS.node(named:)`).
public struct NodeTLS: Sendable {
    public let server: NIOSSLContext
    public let peerServer: NIOSSLContext
    public let peerClient: NIOSSLContext

    public init(_ files: TLSFiles) throws {
        let chain = try NIOSSLCertificate.fromPEMFile(files.certificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(file: files.key, format: .pem))
        let roots = NIOSSLTrustRoots.certificates(try NIOSSLCertificate.fromPEMFile(files.ca))
        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
        server.minimumTLSVersion = .tlsv12
        var peerServer = TLSConfiguration.makeServerConfigurationWithMTLS(certificateChain: chain, privateKey: key, trustRoots: roots)
        peerServer.minimumTLSVersion = .tlsv13
        var peerClient = TLSConfiguration.makeClientConfiguration()
        peerClient.certificateChain = chain
        peerClient.privateKey = key
        peerClient.trustRoots = roots
        peerClient.certificateVerification = .fullVerification
        peerClient.minimumTLSVersion = .tlsv13
        self.server = try NIOSSLContext(configuration: server)
        self.peerServer = try NIOSSLContext(configuration: peerServer)
        self.peerClient = try NIOSSLContext(configuration: peerClient)
    }

    /// The node a certificate names: its one DNS subject alternative name of the form `n<id>`
    /// (nil: none, or more than one).
    public static func node(named certificate: NIOSSLCertificate) -> NodeID? {
        guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der),
              let names = try? parsed.extensions.subjectAlternativeNames else { return nil }
        let nodes = names.compactMap { name -> UInt64? in
            guard case let .dnsName(dns) = name, dns.hasPrefix("n"), let raw = UInt64(dns.dropFirst()), raw > 0 else { return nil }
            return raw
        }
        return nodes.count == 1 ? NodeID(nodes[0]) : nil
    }
}

/// A throwaway certificate authority and node certificates for a local cluster (`cluster up
/// --tls`): ECDSA P-256, valid for a year. Each node certificate names `n<id>`, `localhost`
/// and 127.0.0.1 (and `host` when it is another name or address), for both server and client use.
public enum LocalCertificates {
    /// Writes `ca.pem`, `ca-key.pem`, and `n<i>.pem` with `n<i>-key.pem` for each node into
    /// `directory` (keys readable by the owner only); returns each node's files.
    public static func write(to directory: String, nodes: [NodeID], host: String = "127.0.0.1") throws -> [NodeID: TLSFiles] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName { CommonName("Continuum local CA") }
        let now = Date()
        let ca = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey), notValidBefore: now - 3_600,
            notValidAfter: now + 365 * 86_400, issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(caKey))
        let caPath = directory + "/ca.pem"
        try write(try ca.serializeAsPEM().pemString, to: caPath, private: false)
        try write(caKey.pemRepresentation, to: directory + "/ca-key.pem", private: true)
        var files: [NodeID: TLSFiles] = [:]
        for node in nodes {
            let key = P256.Signing.PrivateKey()
            var names: [GeneralName] = [.dnsName("n\(node.rawValue)"), .dnsName("localhost"),
                                        .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))]
            if let address = ipv4(host) {
                if address != [127, 0, 0, 1] { names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(address)))) }
            } else if host != "localhost" {
                names.append(.dnsName(host))
            }
            let certificate = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: now - 3_600,
                notValidAfter: now + 365 * 86_400, issuer: caName, subject: try DistinguishedName { CommonName("n\(node.rawValue)") },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth, .clientAuth])
                    SubjectAlternativeNames(names)
                },
                issuerPrivateKey: .init(caKey))
            let certificatePath = directory + "/n\(node.rawValue).pem", keyPath = directory + "/n\(node.rawValue)-key.pem"
            try write(try certificate.serializeAsPEM().pemString, to: certificatePath, private: false)
            try write(key.pemRepresentation, to: keyPath, private: true)
            files[node] = TLSFiles(certificate: certificatePath, key: keyPath, ca: caPath)
        }
        return files
    }

    private static func write(_ text: String, to path: String, private: Bool) throws {
        guard FileManager.default.createFile(atPath: path, contents: Data((text + "\n").utf8),
                                             attributes: [.posixPermissions: `private` ? 0o600 : 0o644]) else {
            throw ContinuumError.invalidRequest("cannot write \(path)")
        }
    }

    static func ipv4(_ host: String) -> [UInt8]? {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false).compactMap { UInt8($0) }
        return parts.count == 4 && host.split(separator: ".", omittingEmptySubsequences: false).count == 4 ? parts : nil
    }
}
