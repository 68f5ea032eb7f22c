import Continuum
import ContinuumCore
import Testing

/// The README's code sample, verbatim but for the print, so that it stays true.
@Test(.timeLimit(.minutes(1))) func readmeExample() async throws {
    let cluster = await EmbeddedCluster(nodes: 3)            // 3 nodes in this process
    let carts = try await cluster.declare("cart", as: ORSet<String>.self)
    cluster.isolate(3)                                         // n3 is cut off...
    let offline = try await carts[2].update { set, replica in set.insert("tea", replica: replica) }
    let online = try await carts[0].update { set, replica in set.insert("jam", replica: replica) }
    cluster.healAll()                                          // ...and back: both updates everywhere
    let merged = try await carts[1].read(atLeast: offline.join(online), timeout: .seconds(5))
    let shortNames = try await carts[1].filter("short") { $0.count <= 3 }   // a derived register
    #expect(merged.elements == ["tea", "jam"])
    #expect(try await shortNames.read().elements == ["tea", "jam"])
    await cluster.shutdown()
}
