import Foundation

/// A JSON value as it appears in a history (docs/design.md section 6).
public enum HistoryValue: Hashable, Sendable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case int(Int64)
    case string(String)
    case array([HistoryValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .int(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([HistoryValue].self) { self = .array(value) }
        else { throw DecodingError.dataCorruptedError(in: container, debugDescription: "unsupported history value") }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case let .bool(value): try container.encode(value)
        case let .int(value): try container.encode(value)
        case let .string(value): try container.encode(value)
        case let .array(value): try container.encode(value)
        }
    }

    public var description: String {
        switch self {
        case .null: "null"
        case let .bool(value): "\(value)"
        case let .int(value): "\(value)"
        case let .string(value): "\"\(value)\""
        case let .array(values): "[" + values.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

/// One line of a history: an operation's invocation or completion (Jepsen's conventions).
public struct HistoryEvent: Hashable, Sendable, Codable {
    public enum Kind: String, Sendable, Codable {
        case invoke
        /// Took effect (for a `cas`, ran; its value says whether it swapped).
        case ok
        /// Definitely did not take effect.
        case fail
        /// Indeterminate: may take effect at any time after its invocation, or never.
        case info
    }

    public var process: Int
    public var type: Kind
    public var f: String
    public var key: String
    public var value: HistoryValue
    /// Nanoseconds of true (simulated) time.
    public var time: Int64

    public init(process: Int, type: Kind, f: String, key: String, value: HistoryValue, time: Int64) {
        self.process = process
        self.type = type
        self.f = f
        self.key = key
        self.value = value
        self.time = time
    }
}

/// Reading and writing histories as JSON Lines.
public enum History {
    public struct ParseError: Error, CustomStringConvertible {
        public var line: Int
        public var reason: String
        public var description: String { "line \(line): \(reason)" }
    }

    public static func parse(_ text: String) throws(ParseError) -> [HistoryEvent] {
        let decoder = JSONDecoder()
        var events: [HistoryEvent] = []
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { continue }
            do {
                events.append(try decoder.decode(HistoryEvent.self, from: Data(trimmed.utf8)))
            } catch {
                throw ParseError(line: number + 1, reason: "\(error)")
            }
        }
        for (index, event) in events.enumerated().dropFirst() where event.time < events[index - 1].time {
            throw ParseError(line: index + 1, reason: "events are not in time order")
        }
        return events
    }

    public static func jsonLines(_ events: [HistoryEvent]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return events.map { String(decoding: (try? encoder.encode($0)) ?? Data(), as: UTF8.self) }.joined(separator: "\n") + "\n"
    }
}
