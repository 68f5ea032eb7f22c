// swift-tools-version: 6.2
import PackageDescription

// Layers (DESIGN.md section 4); imports point down only:
//   continuum (CLI) -> ContinuumSimulation, Continuum -> ContinuumProtocols -> ContinuumCore
//   ContinuumStorage (SQLite through GRDB) -> Continuum (the runtime's NodeStorage)
//   ContinuumClient (the network client library, RESP) -> ContinuumProtocols, ContinuumCore (no runtime, no SQLite)
//   ContinuumNIO (TCP between nodes, the RESP server, the node server) -> ContinuumClient, ContinuumStorage, Continuum
let package = Package(
    name: "Continuum",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Continuum", targets: ["Continuum"]),
        .library(name: "ContinuumCore", targets: ["ContinuumCore"]),
        .library(name: "ContinuumProtocols", targets: ["ContinuumProtocols"]),
        .library(name: "ContinuumSimulation", targets: ["ContinuumSimulation"]),
        .library(name: "ContinuumStorage", targets: ["ContinuumStorage"]),
        .library(name: "ContinuumNIO", targets: ["ContinuumNIO"]),
        .library(name: "ContinuumClient", targets: ["ContinuumClient"]),
        .executable(name: "continuum", targets: ["ContinuumCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        // `swift package generate-documentation`: the DocC catalogues in Sources/*/*.docc.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin.git", from: "1.5.0"),
    ],
    targets: [
        .target(name: "ContinuumCore"),
        .target(name: "ContinuumProtocols", dependencies: ["ContinuumCore", .product(name: "DequeModule", package: "swift-collections")]),
        .target(name: "Continuum", dependencies: [
            "ContinuumCore", "ContinuumProtocols", .product(name: "DequeModule", package: "swift-collections"),
        ]),
        .target(
            name: "ContinuumClient",
            dependencies: [
                "ContinuumCore", "ContinuumProtocols",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .target(
            name: "ContinuumNIO",
            dependencies: [
                "Continuum", "ContinuumClient", "ContinuumCore", "ContinuumProtocols",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                "ContinuumStorage",
            ]
        ),
        .target(
            name: "ContinuumStorage",
            dependencies: ["Continuum", "ContinuumCore", "ContinuumProtocols", .product(name: "GRDB", package: "GRDB.swift")]
        ),
        .target(
            name: "ContinuumSimulation",
            dependencies: [
                "ContinuumCore",
                "ContinuumProtocols",
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        .executableTarget(
            name: "ContinuumCLI",
            dependencies: [
                "Continuum",
                "ContinuumCore",
                "ContinuumProtocols",
                "ContinuumSimulation",
                "ContinuumNIO",
                "ContinuumClient",
                "ContinuumStorage",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "ContinuumCoreTests",
            dependencies: [
                "ContinuumCore",
                "ContinuumSimulation",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "ContinuumTests",
            dependencies: ["Continuum", "ContinuumCore", "ContinuumProtocols"]
        ),
        .testTarget(
            name: "ContinuumNIOTests",
            dependencies: [
                "Continuum", "ContinuumCore", "ContinuumProtocols", "ContinuumNIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "ContinuumClusterTests",
            dependencies: ["ContinuumNIO", "ContinuumSimulation"]
        ),
        .testTarget(
            name: "ContinuumStorageTests",
            dependencies: ["Continuum", "ContinuumCore", "ContinuumProtocols", "ContinuumStorage", .product(name: "GRDB", package: "GRDB.swift")]
        ),
        .testTarget(
            name: "ContinuumProtocolsTests",
            dependencies: ["ContinuumCore", "ContinuumProtocols", "ContinuumSimulation"]
        ),
        .testTarget(
            name: "ContinuumSimulationTests",
            dependencies: ["ContinuumCore", "ContinuumProtocols", "ContinuumSimulation"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
