//! Format names (MS-MQMQ 2.1) through the public API: every grammar form, case rules, limits,
//! the DIGEST §8.4 wire examples, UserHeader mapping, and property tests.

use std::net::{IpAddr, Ipv4Addr};

use lior::wire::format_name::{
    mqf_format_type, DirectAddress, DirectName, FormatName, FormatNameErrorKind as K, HostName,
    IpxAddress, MulticastAddress, MultipleElements, Protocol, QueueFormatType, QueueName,
    QueuePath, QueueRole, QueueSuffix, QueueSuffixType, SubqueueName, SystemQueue, WireContext,
};
use lior::wire::user::QueueRef;
use lior::wire::{utf16z, Guid, Utf16};
use proptest::prelude::*;

const G: &str = "557358d1-9150-9595-4997-b6e611ea26c6";
const G2: &str = "0f0e0d0c-0b0a-0908-0706-050403020100";

fn g() -> Guid {
    Guid::parse_text(G).unwrap()
}

fn g2() -> Guid {
    Guid::parse_text(G2).unwrap()
}

fn parse(s: &str) -> FormatName {
    FormatName::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn err(s: &str) -> K {
    match FormatName::parse(s) {
        Ok(v) => panic!("{s} should not parse, got {v:?}"),
        Err(e) => {
            // Every error must say what and where.
            assert!(e.position.is_some(), "{s}: {e}");
            assert!(!e.kind.describe().is_empty());
            e.kind
        }
    }
}

/// Parses, checks the canonical print, and checks that the print parses back to the same value.
fn canonical(input: &str, expected: &str) -> FormatName {
    let f = parse(input);
    assert_eq!(f.to_string(), expected, "canonical form of {input}");
    assert_eq!(parse(expected), f, "round trip of {expected}");
    f
}

#[test]
fn direct_forms_parse_and_print() {
    let cases = [
        (r"DIRECT=OS:a04bm02\q", r"DIRECT=OS:a04bm02\q"),
        (r"DIRECT=OS:.\private$\q", r"DIRECT=OS:.\PRIVATE$\q"),
        (
            r"DIRECT=OS:host.example.com\Queue;JOURNAL",
            r"DIRECT=OS:host.example.com\Queue;JOURNAL",
        ),
        (
            r"DIRECT=OS:mymachine\private$\orders;rejectedorders",
            r"DIRECT=OS:mymachine\PRIVATE$\orders;rejectedorders",
        ),
        (
            r"DIRECT=OS:host\SYSTEM$;JOURNAL",
            r"DIRECT=OS:host\SYSTEM$;JOURNAL",
        ),
        (
            r"DIRECT=OS:host\system$;deadletter",
            r"DIRECT=OS:host\SYSTEM$;DEADLETTER",
        ),
        (
            r"DIRECT=TCP:10.0.0.1\SYSTEM$;DeadXact",
            r"DIRECT=TCP:10.0.0.1\SYSTEM$;DEADXACT",
        ),
        (
            r"DIRECT=TCP:192.0.2.20\private$\orders",
            r"DIRECT=TCP:192.0.2.20\PRIVATE$\orders",
        ),
        (
            r"DIRECT=TCP:192.0.2.10\PRIVATE$\order_queue$",
            r"DIRECT=TCP:192.0.2.10\PRIVATE$\order_queue$",
        ),
        (r"DIRECT=TCP:2001:DB8::1\q", r"DIRECT=TCP:2001:db8::1\q"),
        (
            r"DIRECT=IPX:00000001:00A0C9123456\q",
            r"DIRECT=IPX:00000001:00a0c9123456\q",
        ),
        (
            r"DIRECT=SPX:1:2\PRIVATE$\order_queue$",
            r"DIRECT=SPX:00000001:000000000002\PRIVATE$\order_queue$",
        ),
        (
            r"DIRECT=HTTP://host/msmq/private$/q",
            r"DIRECT=HTTP://host/msmq/PRIVATE$/q",
        ),
        (
            r"DIRECT=HTTP://host/MSMQ\private$\q",
            r"DIRECT=HTTP://host/msmq/PRIVATE$/q",
        ),
        (
            r"DIRECT=http://host/msmq\private$/q",
            r"DIRECT=HTTP://host/msmq/PRIVATE$/q",
        ),
        (
            r"DIRECT=HTTPS://web.example.com:8443/msmq/q",
            r"DIRECT=HTTPS://web.example.com:8443/msmq/q",
        ),
        (
            r"DIRECT=HTTP://[::1]:80/msmq/q;JOURNAL",
            r"DIRECT=HTTP://[::1]:80/msmq/q;JOURNAL",
        ),
        (
            r"DIRECT=HTTPS://h/msmq/SYSTEM$;DEADLETTER",
            r"DIRECT=HTTPS://h/msmq/SYSTEM$;DEADLETTER",
        ),
    ];
    for (input, expected) in cases {
        let f = canonical(input, expected);
        assert!(f.as_direct().is_some());
        assert_eq!(f.mqf_format_type(), Some(mqf_format_type::DIRECT));
    }
}

#[test]
fn other_forms_parse_and_print() {
    let cases = [
        (format!("PUBLIC={G}"), format!("PUBLIC={G}")),
        (
            format!("public={{{}}};journal", G.to_uppercase()),
            format!("PUBLIC={G};JOURNAL"),
        ),
        (format!("PRIVATE={G}\\4"), format!("PRIVATE={G}\\00000004")),
        (
            format!("PRIVATE={G}\\00000004;JOURNAL"),
            format!("PRIVATE={G}\\00000004;JOURNAL"),
        ),
        (
            format!("PRIVATE={G}\\FFFFFFFF"),
            format!("PRIVATE={G}\\ffffffff"),
        ),
        (
            format!("MACHINE={G};JOURNAL"),
            format!("MACHINE={G};JOURNAL"),
        ),
        (
            format!("machine={G};deadletter"),
            format!("MACHINE={G};DEADLETTER"),
        ),
        (
            format!("MACHINE={G};DEADXACT"),
            format!("MACHINE={G};DEADXACT"),
        ),
        (format!("CONNECTOR={G}"), format!("CONNECTOR={G}")),
        (
            format!("Connector={G};XactOnly"),
            format!("CONNECTOR={G};XACTONLY"),
        ),
        (format!("DL={G}"), format!("DL={G}")),
        (
            format!("dl={G}@Corp.Example.com"),
            format!("DL={G}@Corp.Example.com"),
        ),
        (
            "MULTICAST=234.1.1.1:8001".to_owned(),
            "MULTICAST=234.1.1.1:8001".to_owned(),
        ),
        (
            "multicast=224.0.0.0:0".to_owned(),
            "MULTICAST=224.0.0.0:0".to_owned(),
        ),
        (
            "MULTICAST=239.255.255.255:65535".to_owned(),
            "MULTICAST=239.255.255.255:65535".to_owned(),
        ),
    ];
    for (input, expected) in &cases {
        canonical(input, expected);
    }
}

#[test]
fn kinds_types_and_suffixes() {
    let check = |s: String, t: Option<QueueFormatType>, x: QueueSuffixType| {
        let f = parse(&s);
        assert_eq!((f.format_type(), f.suffix_type()), (t, x), "{s}");
    };
    use QueueFormatType as T;
    use QueueSuffixType as X;
    check(format!("PUBLIC={G}"), Some(T::Public), X::None);
    check(format!("PUBLIC={G};JOURNAL"), Some(T::Public), X::Journal);
    check(format!("PRIVATE={G}\\1"), Some(T::Private), X::None);
    check(
        format!("MACHINE={G};DEADXACT"),
        Some(T::Machine),
        X::DeadXact,
    );
    check(
        format!("CONNECTOR={G};XACTONLY"),
        Some(T::Connector),
        X::XactOnly,
    );
    check(format!("DL={G}"), Some(T::DistributionList), X::None);
    check("MULTICAST=230.0.0.1:1".into(), Some(T::Multicast), X::None);
    check(r"DIRECT=OS:h\q".into(), Some(T::Direct), X::None);
    check(r"DIRECT=OS:h\q;sub".into(), Some(T::Subqueue), X::Subqueue);
    check(
        r"DIRECT=OS:h\SYSTEM$;DEADLETTER".into(),
        Some(T::Direct),
        X::DeadLetter,
    );
    check(format!("PUBLIC={G},DL={G}"), None, X::None);
    assert_eq!(QueueFormatType::Subqueue as u8, 8);
    assert_eq!(QueueSuffixType::Subqueue as u8, 5);
}

#[test]
fn multiple_element_names() {
    let s = format!(
        r"DIRECT=OS:host\q,PUBLIC={G},DL={G}@d,PRIVATE={G}\a,CONNECTOR={G};XACTONLY,MULTICAST=224.1.2.3:9"
    );
    let expected = format!(
        r"DIRECT=OS:host\q,PUBLIC={G},DL={G}@d,PRIVATE={G}\0000000a,CONNECTOR={G};XACTONLY,MULTICAST=224.1.2.3:9"
    );
    let f = canonical(&s, &expected);
    assert_eq!(f.elements().len(), 6);
    assert_eq!(
        f.elements()[1].mqf_format_type(),
        Some(mqf_format_type::PUBLIC)
    );
    assert_eq!(
        f.elements()[3].mqf_format_type(),
        Some(mqf_format_type::PRIVATE)
    );
    assert_eq!(
        f.elements()[2].mqf_format_type(),
        Some(mqf_format_type::DISTRIBUTION_LIST)
    );
    assert_eq!(f.elements()[4].mqf_format_type(), None);
    assert!(!f.is_http());
    let http = parse("DIRECT=HTTP://a/msmq/q,DIRECT=HTTPS://b/msmq/PRIVATE$/r");
    assert!(http.is_http());
    // A single element is a plain name, not a one-element list.
    assert_eq!(parse(&format!("PUBLIC={G}")).elements().len(), 1);
    assert!(MultipleElements::new(vec![parse(&format!("PUBLIC={G}"))]).is_err());
    let m = MultipleElements::new(vec![parse(&format!("PUBLIC={G}")), parse(r"DIRECT=OS:h\q")])
        .unwrap();
    assert_eq!(
        FormatName::Multiple(m).to_string(),
        format!(r"PUBLIC={G},DIRECT=OS:h\q")
    );
    assert!(MultipleElements::new(vec![
        parse(&format!("PUBLIC={G}")),
        parse(&format!("MACHINE={G};JOURNAL"))
    ])
    .is_err());
}

#[test]
fn multiple_element_rules() {
    // MS-MQMQ 2.1.7: no read-only queues (journals, machine and dead-letter queues).
    for bad in [
        format!("PUBLIC={G},PUBLIC={G};JOURNAL"),
        format!(r"PUBLIC={G},PRIVATE={G}\1;JOURNAL"),
        format!("PUBLIC={G},MACHINE={G};DEADLETTER"),
        format!(r"PUBLIC={G},DIRECT=OS:h\SYSTEM$;DEADXACT"),
        format!(r"PUBLIC={G},DIRECT=OS:h\q;JOURNAL"),
        format!(r"PUBLIC={G},DIRECT=OS:h\q;subqueue"),
    ] {
        assert_eq!(err(&bad), K::NotAllowedInMultiple, "{bad}");
    }
    assert_eq!(err(&format!("PUBLIC={G},")), K::EmptyElement);
    assert_eq!(err(&format!(",PUBLIC={G}")), K::EmptyElement);
    assert_eq!(err(&format!("PUBLIC={G},,PUBLIC={G}")), K::EmptyElement);
    let many = vec![format!("PUBLIC={G}"); 1025].join(",");
    assert_eq!(err(&many), K::TooManyElements);
    let ok = vec![format!("PUBLIC={G}"); 1024].join(",");
    assert_eq!(parse(&ok).elements().len(), 1024);
}

#[test]
fn keywords_are_case_insensitive_names_keep_case() {
    let a = parse(r"dIrEcT=Os:HostA\PrIvAtE$\MyQueue;Sub");
    assert_eq!(a.to_string(), r"DIRECT=OS:HostA\PRIVATE$\MyQueue;Sub");
    let b = parse(r"DIRECT=OS:hosta\private$\myqueue;sub");
    assert_ne!(a, b);
    assert!(a.eq_ignore_case(&b));
    assert_eq!(a.normalized_key(), b.normalized_key());
    assert_eq!(a.queue_name().unwrap().as_str(), "MyQueue");
    assert!(a
        .queue_name()
        .unwrap()
        .eq_ignore_case(b.queue_name().unwrap()));
    assert_eq!(a.queue_name().unwrap().key(), "myqueue");
    assert!(!a.eq_ignore_case(&parse(r"DIRECT=OS:hosta\private$\myqueue")));
    assert_eq!(
        parse(&format!("PUBLIC={}", G.to_uppercase())),
        parse(&format!("PUBLIC={G}"))
    );
    assert_eq!(
        parse("DIRECT=TCP:1.2.3.4\\q"),
        parse("direct=tcp:1.2.3.4\\q")
    );
}

#[test]
fn direct_helpers() {
    let f = parse(r"DIRECT=TCP:192.0.2.20\private$\orders");
    let d = f.as_direct().unwrap();
    assert_eq!(d.protocol(), Protocol::Tcp);
    assert_eq!(d.host(), "192.0.2.20");
    assert_eq!(
        d.address,
        DirectAddress::Tcp(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20)))
    );
    assert!(
        matches!(&d.queue, QueuePath::Private { name, suffix: QueueSuffix::None } if name.as_str() == "orders")
    );
    assert!(f.is_private());
    assert!(!f.is_http());
    assert!(!f.is_read_only());
    assert_eq!(f.path_name().unwrap(), r"192.0.2.20\PRIVATE$\orders");

    let h = parse(r"DIRECT=HTTPS://Web.Example.com:8443/msmq/private$/q");
    let d = h.as_direct().unwrap();
    assert!(h.is_http());
    assert_eq!(d.host(), "Web.Example.com");
    assert_eq!(d.address.port(), Some(8443));
    assert_eq!(h.path_name().unwrap(), r"Web.Example.com\PRIVATE$\q");
    assert_eq!(
        d.wire_string(),
        "HTTPS://Web.Example.com:8443/msmq/PRIVATE$/q"
    );

    let s = parse(r"DIRECT=OS:box\SYSTEM$;DEADLETTER");
    assert_eq!(
        s.as_direct().unwrap().queue,
        QueuePath::System(SystemQueue::DeadLetter)
    );
    assert!(s.is_read_only());
    assert!(s.queue_name().is_none());
    assert_eq!(s.path_name().unwrap(), r"box\SYSTEM$;DEADLETTER");

    let p = parse(r"DIRECT=OS:box\pub;JOURNAL");
    assert!(!p.is_private() && p.is_read_only());

    let sub = parse(r"DIRECT=OS:box\private$\orders;poison");
    assert_eq!(
        sub.as_direct().unwrap().queue.subqueue().unwrap().as_str(),
        "poison"
    );

    let oq = DirectName::order_queue(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
    assert_eq!(
        oq.to_string(),
        r"DIRECT=TCP:192.0.2.10\PRIVATE$\order_queue$"
    );
    assert_eq!(oq.wire_string(), r"TCP:192.0.2.10\PRIVATE$\order_queue$");

    assert!(parse(&format!("PRIVATE={G}\\1")).is_private());
    assert!(parse(&format!("MACHINE={G};JOURNAL")).is_read_only());
    assert!(parse(&format!("PUBLIC={G}")).path_name().is_none());
}

#[test]
fn limits_are_enforced() {
    let host256 = "h".repeat(256);
    assert!(FormatName::parse(&format!(r"DIRECT=OS:{host256}\q")).is_ok());
    assert_eq!(err(&format!(r"DIRECT=OS:{host256}x\q")), K::HostTooLong);
    assert_eq!(err(r"DIRECT=OS:\q"), K::HostEmpty);
    for c in [';', '/', '"', ' ', ':', 'é'] {
        assert_eq!(
            err(&format!(r"DIRECT=OS:ho{c}st\q")),
            K::HostBadChar,
            "{c:?}"
        );
    }

    let q124 = "q".repeat(124);
    assert!(FormatName::parse(&format!(r"DIRECT=OS:h\{q124}")).is_ok());
    assert!(FormatName::parse(&format!(r"DIRECT=OS:h\private$\{q124}")).is_ok());
    assert_eq!(err(&format!(r"DIRECT=OS:h\{q124}q")), K::QueueNameTooLong);
    // The limit counts UTF-16 units, as Windows does: 62 characters outside the BMP are 124.
    assert!(FormatName::parse(&format!(r"DIRECT=OS:h\{}", "😀".repeat(62))).is_ok());
    assert_eq!(
        err(&format!(r"DIRECT=OS:h\{}q", "😀".repeat(62))),
        K::QueueNameTooLong
    );
    assert_eq!(err(r"DIRECT=OS:h\private$\"), K::QueueNameEmpty);
    assert_eq!(err(r"DIRECT=OS:h\"), K::MissingQueue);
    assert_eq!(err(r"DIRECT=OS:h"), K::MissingQueue);
    for c in [' ', '"', '+', ',', '\\', '\t', '\u{0}'] {
        let s = format!(r"DIRECT=OS:h\private$\a{c}b");
        let k = err(&s);
        // A comma splits the name into elements; the first one then ends without a queue name.
        let want = if c == ',' {
            K::UnknownType
        } else {
            K::QueueNameBadChar
        };
        assert_eq!(k, want, "{s:?}");
    }
    assert_eq!(err(r"DIRECT=OS:h\private$"), K::QueueNameReserved);
    assert_eq!(err(r"DIRECT=OS:h\SYSTEM$"), K::QueueNameReserved);
    assert_eq!(err(r"DIRECT=HTTP://h/msmq/PRIVATE$"), K::QueueNameReserved);
    assert_eq!(err(r"DIRECT=OS:h\private$/x"), K::QueueNameReserved);

    let s32 = "s".repeat(32);
    assert!(FormatName::parse(&format!(r"DIRECT=OS:h\q;{s32}")).is_ok());
    assert_eq!(err(&format!(r"DIRECT=OS:h\q;{s32}s")), K::SubqueueTooLong);
    assert_eq!(err(r"DIRECT=OS:h\q;"), K::SubqueueEmpty);
    assert_eq!(err(r"DIRECT=OS:h\q;a;b"), K::SubqueueBadChar);
    assert_eq!(err(r"DIRECT=OS:h\q;a b"), K::SubqueueBadChar);
    assert_eq!(err(r"DIRECT=OS:h\q;DEADLETTER"), K::SuffixNotAllowed);
    assert_eq!(err(r"DIRECT=OS:h\q;xactonly"), K::SuffixNotAllowed);
    assert!(SubqueueName::new("Journal").is_err());
    assert!(SubqueueName::new("poison").is_ok());
    assert_eq!(err(r"DIRECT=OS:h\SYSTEM$;"), K::BadSystemQueue);
    assert_eq!(err(r"DIRECT=OS:h\SYSTEM$;XACTONLY"), K::BadSystemQueue);
    assert_eq!(err(r"DIRECT=OS:h\SYSTEM$;JOURNAL;x"), K::BadSystemQueue);

    assert_eq!(err(&format!(r"PRIVATE={G}\123456789")), K::BadPrivateId);
    assert_eq!(err(&format!(r"PRIVATE={G}\")), K::BadPrivateId);
    assert_eq!(err(&format!(r"PRIVATE={G}\12g")), K::BadPrivateId);
    assert_eq!(err(&format!(r"PRIVATE={G}\+1")), K::BadPrivateId);
    assert_eq!(err(&format!(r"PRIVATE={G}")), K::BadPrivateId);
    assert_eq!(err(&format!(r"PRIVATE={G}/1")), K::BadPrivateId);
    assert_eq!(
        err(&format!(r"PRIVATE={G}\1;DEADLETTER")),
        K::SuffixNotAllowed
    );
    assert_eq!(err(&format!(r"PRIVATE={G}\1;FOO")), K::BadSuffix);

    assert_eq!(err(&format!("PUBLIC={G};DEADXACT")), K::SuffixNotAllowed);
    assert_eq!(err(&format!("PUBLIC={G};XACTONLY")), K::SuffixNotAllowed);
    assert_eq!(err(&format!("PUBLIC={G}x")), K::TrailingText);
    assert_eq!(err("PUBLIC=not-a-guid"), K::BadGuid);
    assert_eq!(err(&format!("MACHINE={G}")), K::MissingSuffix);
    assert_eq!(err(&format!("MACHINE={G};XACTONLY")), K::SuffixNotAllowed);
    assert_eq!(err(&format!("CONNECTOR={G};JOURNAL")), K::SuffixNotAllowed);
    assert_eq!(err(&format!("DL={G};JOURNAL")), K::SuffixNotAllowed);
    assert_eq!(err(&format!("DL={G}@")), K::BadDomain);
    assert_eq!(err(&format!("DL={G}@{}", "d".repeat(256))), K::BadDomain);
    assert!(FormatName::parse(&format!("DL={G}@{}", "d".repeat(255))).is_ok());

    for bad in [
        "MULTICAST=223.255.255.255:80",
        "MULTICAST=240.0.0.0:80",
        "MULTICAST=224.0.0.1:65536",
        "MULTICAST=224.0.0.1:080",
        "MULTICAST=224.0.0.01:80",
        "MULTICAST=224.0.0:80",
        "MULTICAST=224.0.0.1",
        "MULTICAST=224.0.0.1:",
        "MULTICAST=224.0.0.1:+1",
    ] {
        assert_eq!(err(bad), K::BadMulticast, "{bad}");
    }

    assert_eq!(err(r"DIRECT=TCP:myhost\q"), K::BadTcpAddress);
    assert_eq!(err(r"DIRECT=TCP:1.2.3\q"), K::BadTcpAddress);
    assert_eq!(err(r"DIRECT=FTP:h\q"), K::UnknownProtocol);
    assert_eq!(err(r"DIRECT=h\q"), K::UnknownProtocol);
    assert_eq!(err(r"DIRECT=IPX:zz:1\q"), K::BadIpxAddress);
    assert_eq!(err(r"DIRECT=IPX:123456789:1\q"), K::BadIpxAddress);
    assert_eq!(err(r"DIRECT=IPX:1:1234567890123\q"), K::BadIpxAddress);
    assert_eq!(err(r"DIRECT=HTTP:host/msmq/q"), K::BadHttpAddress);
    assert_eq!(err(r"DIRECT=HTTP://host/other/q"), K::BadHttpAddress);
    assert_eq!(err(r"DIRECT=HTTP://host/msmqx/q"), K::BadHttpAddress);
    assert_eq!(err(r"DIRECT=HTTP://host\msmq\q"), K::BadHttpAddress);
    assert_eq!(err(r"DIRECT=HTTP://host/msmq"), K::MissingQueue);
    assert_eq!(err(r"DIRECT=HTTP://host:99999/msmq/q"), K::BadPort);
    assert_eq!(err(r"DIRECT=HTTP://host:/msmq/q"), K::BadPort);
    assert_eq!(err(r"DIRECT=HTTP://[nope]/msmq/q"), K::HostBadChar);
    assert_eq!(err(r"DIRECT=HTTP:///msmq/q"), K::HostEmpty);

    assert_eq!(err(""), K::Empty);
    assert_eq!(err("FOO=bar"), K::UnknownType);
    assert_eq!(err("PUBLIC"), K::UnknownType);
    assert_eq!(err(&format!(" PUBLIC={G}")), K::UnknownType);
}

#[test]
fn errors_say_where() {
    let e = FormatName::parse(r"DIRECT=OS:host\private$\bad+name").unwrap_err();
    assert_eq!(e.kind, K::QueueNameBadChar);
    assert_eq!(e.position, Some(27));
    assert_eq!(
        e.to_string(),
        "bad format name at position 27: the queue name holds a character MSMQ forbids \
         (space, control, \\ ; + , \")"
    );
    let e = FormatName::parse(&format!(r"PUBLIC={G},PRIVATE={G}\xyz")).unwrap_err();
    assert_eq!((e.kind, e.position), (K::BadPrivateId, Some(89)));
    let e = FormatName::parse("MULTICAST=1.2.3.4:5").unwrap_err();
    assert_eq!((e.kind, e.position), (K::BadMulticast, Some(10)));
}

#[test]
fn constructors_validate() {
    assert!(QueueName::new("orders").is_ok());
    assert!(QueueName::new("").is_err());
    assert!(QueueName::new("a;b").is_err());
    assert!(HostName::new("[::1]").is_ok());
    assert!(HostName::new("[::1").is_err());
    assert!(HostName::new("a:b").is_err());
    assert!(IpxAddress::new(1, 1 << 48).is_none());
    assert!(MulticastAddress::new(Ipv4Addr::new(10, 0, 0, 1), 1).is_none());
    assert!(MulticastAddress::new(Ipv4Addr::new(239, 0, 0, 1), 1).is_some());
}

// DIGEST §8.4 and MS-MQQB 2.2.4 examples.

#[test]
fn digest_wire_examples() {
    // Frame 7: 0x1A bytes of UTF-16 including the NUL.
    let f = parse(r"DIRECT=OS:a04bm02\q");
    let wire = f.direct_wire_string().unwrap();
    assert_eq!(wire.len(), 0x1A);
    assert_eq!(wire, utf16z(r"OS:a04bm02\q"));
    let back =
        FormatName::from_queue_ref(&QueueRef::Direct(Utf16(&wire)), g(), Guid::NULL, None).unwrap();
    assert_eq!(back, f);

    // Derived V2: 62 bytes. We print PRIVATE$ as the spec's ABNF spells it; the digest's
    // lowercase spelling parses to an equal name and compares equal without case.
    let f = parse(r"DIRECT=TCP:192.0.2.20\private$\orders");
    let wire = f.direct_wire_string().unwrap();
    assert_eq!(wire.len(), 0x3E);
    assert_eq!(wire, utf16z(r"TCP:192.0.2.20\PRIVATE$\orders"));
    let digest_wire = utf16z(r"TCP:192.0.2.20\private$\orders");
    let back = FormatName::from_queue_ref(
        &QueueRef::Direct(Utf16(&digest_wire)),
        g(),
        Guid::NULL,
        None,
    )
    .unwrap();
    assert_eq!(back, f);
    assert_eq!(f.queue_manager_address(), Some(Guid::NULL));

    // Order acks (MS-MQQB 2.2.4).
    let oq = utf16z(r"TCP:192.0.2.10\PRIVATE$\order_queue$");
    let d = DirectName::from_utf16(Utf16(&oq)).unwrap();
    assert_eq!(d.queue.name().unwrap().as_str(), "order_queue$");
    assert!(d.queue.is_private());
    assert_eq!(d.wire_bytes(), oq);

    // PRIVATE={QM}\00000004 addressed to that QM is DQ code 3.
    let f = parse(&format!(r"PRIVATE={G}\00000004"));
    let ctx = WireContext {
        source_qm: g2(),
        destination_qm: g(),
        admin: None,
    };
    let mut scratch = Vec::new();
    let q = f
        .to_queue_ref(QueueRole::Destination, &ctx, &mut scratch)
        .unwrap();
    assert_eq!(q, QueueRef::DestinationPrivate(4));
    assert_eq!(q.code(), 3);
    assert_eq!(f.queue_manager_address(), Some(g()));
    assert_eq!(FormatName::from_queue_ref(&q, g2(), g(), None).unwrap(), f);

    // PUBLIC={G} is DQ code 5.
    let f = parse(&format!("PUBLIC={G}"));
    let q = f
        .to_queue_ref(QueueRole::Destination, &ctx, &mut scratch)
        .unwrap();
    assert_eq!(q, QueueRef::Public(g()));
}

#[test]
fn wire_direct_strings() {
    for (wire, expected) in [
        (r"OS:a04bm02\q", r"DIRECT=OS:a04bm02\q"),
        (
            r"TCP:192.0.2.10\PRIVATE$\order_queue$",
            r"DIRECT=TCP:192.0.2.10\PRIVATE$\order_queue$",
        ),
        (
            r"HTTP://host/msmq/private$/q",
            r"DIRECT=HTTP://host/msmq/PRIVATE$/q",
        ),
        (
            r"https://host/msmq\q;JOURNAL",
            r"DIRECT=HTTPS://host/msmq/q;JOURNAL",
        ),
    ] {
        let d = DirectName::parse_wire(wire).unwrap();
        assert_eq!(d.to_string(), expected);
        let bytes = utf16z(wire);
        assert_eq!(DirectName::from_utf16(Utf16(&bytes)).unwrap(), d);
    }
    // Hostile input: errors, never panics.
    assert!(DirectName::from_utf16(Utf16(&[0x00, 0xD8, 0x41, 0x00])).is_err()); // lone surrogate
    assert!(DirectName::from_utf16(Utf16(&[0x4F, 0x00, 0x53])).is_err()); // odd length
    assert!(DirectName::from_utf16(Utf16(&[])).is_err());
    assert!(DirectName::from_utf16(Utf16(&[0, 0])).is_err());
    assert!(DirectName::parse_wire(r"DIRECT=OS:h\q").is_err());
    // No NUL is tolerated; text after the NUL is ignored (the Count covers it).
    let mut no_nul = utf16z(r"OS:h\q");
    no_nul.truncate(no_nul.len() - 2);
    assert!(DirectName::from_utf16(Utf16(&no_nul)).is_ok());
    let mut after = utf16z(r"OS:h\q");
    after.extend_from_slice(&utf16z("garbage"));
    assert_eq!(
        DirectName::from_utf16(Utf16(&after)).unwrap().to_string(),
        r"DIRECT=OS:h\q"
    );
}

#[test]
fn admin_and_response_encodings() {
    let src = g();
    let dst = g2();
    let third = Guid::parse_text("11111111-2222-3333-4444-555555555555").unwrap();
    let on = |qm: Guid, id: u32| FormatName::Private {
        qm,
        id,
        journal: false,
    };
    let mut scratch = Vec::new();
    let ctx = WireContext {
        source_qm: src,
        destination_qm: dst,
        admin: None,
    };
    let code = |f: &FormatName, role, ctx: &WireContext<'_>, scratch: &mut Vec<u8>| {
        f.to_queue_ref(role, ctx, scratch).map(|q| q.code())
    };
    assert_eq!(
        code(&on(src, 1), QueueRole::Admin, &ctx, &mut scratch),
        Ok(2)
    );
    assert_eq!(
        code(&on(dst, 1), QueueRole::Admin, &ctx, &mut scratch),
        Ok(3)
    );
    assert_eq!(
        code(&on(third, 1), QueueRole::Admin, &ctx, &mut scratch),
        Ok(6)
    );
    assert_eq!(
        code(&on(src, 1), QueueRole::Destination, &ctx, &mut scratch)
            .unwrap_err()
            .kind,
        K::WrongQueueManager
    );

    let admin = on(third, 7);
    let ctx = WireContext {
        source_qm: src,
        destination_qm: dst,
        admin: Some(&admin),
    };
    assert_eq!(code(&admin, QueueRole::Response, &ctx, &mut scratch), Ok(1));
    assert_eq!(
        code(&on(third, 8), QueueRole::Response, &ctx, &mut scratch),
        Ok(4)
    );
    assert_eq!(
        code(&on(src, 8), QueueRole::Response, &ctx, &mut scratch),
        Ok(2)
    );
    assert_eq!(
        code(&on(dst, 8), QueueRole::Response, &ctx, &mut scratch),
        Ok(3)
    );
    // The admin queue itself is never code 1 or 4.
    assert_eq!(
        code(&on(third, 8), QueueRole::Admin, &ctx, &mut scratch),
        Ok(6)
    );

    // Decoding resolves the relative codes with the header's GUIDs.
    let decode = |q: QueueRef<'_>, admin: Option<&FormatName>| {
        FormatName::from_queue_ref(&q, src, dst, admin)
    };
    assert_eq!(decode(QueueRef::SourcePrivate(5), None), Ok(on(src, 5)));
    assert_eq!(
        decode(QueueRef::DestinationPrivate(5), None),
        Ok(on(dst, 5))
    );
    assert_eq!(
        decode(QueueRef::AdminHostPrivate(5), Some(&admin)),
        Ok(on(third, 5))
    );
    assert_eq!(
        decode(QueueRef::Private { qm: third, id: 9 }, None),
        Ok(on(third, 9))
    );
    assert_eq!(
        decode(QueueRef::SameAsAdmin, Some(&admin)),
        Ok(admin.clone())
    );
    assert_eq!(
        decode(QueueRef::SameAsAdmin, None).unwrap_err().kind,
        K::NeedsAdminQueue
    );
    let direct_admin = parse(r"DIRECT=OS:h\q");
    assert_eq!(
        decode(QueueRef::AdminHostPrivate(5), Some(&direct_admin))
            .unwrap_err()
            .kind,
        K::NeedsAdminQueue
    );
    assert_eq!(decode(QueueRef::None, None).unwrap_err().kind, K::NoQueue);

    // Kinds without a UserHeader encoding are refused, not mangled.
    for s in [
        format!("PUBLIC={G};JOURNAL"),
        format!("MACHINE={G};JOURNAL"),
        format!("DL={G}"),
        format!("CONNECTOR={G}"),
        "MULTICAST=224.0.0.1:1".to_owned(),
        format!("PUBLIC={G},DL={G}"),
    ] {
        let f = parse(&s);
        let e = f
            .to_queue_ref(QueueRole::Admin, &ctx, &mut scratch)
            .unwrap_err();
        assert_eq!(e.kind, K::NoWireEncoding, "{s}");
        assert_eq!(e.position, None);
    }

    // Direct names go out verbatim (without DIRECT=) in any role.
    let d = parse(r"DIRECT=OS:Box\PRIVATE$\resp");
    let q = d
        .to_queue_ref(QueueRole::Response, &ctx, &mut scratch)
        .unwrap();
    assert_eq!(q, QueueRef::Direct(Utf16(&utf16z(r"OS:Box\PRIVATE$\resp"))));
}

// Property tests.

/// Visible ASCII without the characters `forbidden` holds.
fn ascii_except(forbidden: &'static str) -> impl Strategy<Value = char> + Clone {
    let allowed: Vec<char> = ('!'..='~').filter(|c| !forbidden.contains(*c)).collect();
    proptest::sample::select(allowed)
}

fn queue_name_chars() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => ascii_except("\\\";+,"),
        1 => Just('é'),
        1 => Just('中'),
        1 => Just('😀'),
    ]
}

fn queue_name() -> impl Strategy<Value = QueueName> {
    proptest::collection::vec(queue_name_chars(), 1..=124)
        .prop_filter_map("valid queue name", |v| {
            QueueName::new(&v.into_iter().collect::<String>()).ok()
        })
}

fn subqueue_name() -> impl Strategy<Value = SubqueueName> {
    proptest::collection::vec(queue_name_chars(), 1..=32)
        .prop_filter_map("valid subqueue name", |v| {
            SubqueueName::new(&v.into_iter().collect::<String>()).ok()
        })
}

fn host_name() -> impl Strategy<Value = HostName> {
    prop_oneof![
        Just(".".to_owned()),
        "[A-Za-z0-9][A-Za-z0-9.$=_-]{0,40}",
        "[a-z]{1,10}(\\.[a-z]{1,10}){0,3}",
        proptest::collection::vec(ascii_except("\\/,;\":[]"), 1..=256)
            .prop_map(|v| v.into_iter().collect::<String>()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
    ]
    .prop_filter_map("valid host", |s| HostName::new(&s).ok())
}

fn guid() -> impl Strategy<Value = Guid> {
    any::<[u8; 16]>().prop_map(Guid)
}

fn suffix() -> impl Strategy<Value = QueueSuffix> {
    prop_oneof![
        Just(QueueSuffix::None),
        Just(QueueSuffix::Journal),
        subqueue_name().prop_map(QueueSuffix::Subqueue),
    ]
}

fn system_queue() -> impl Strategy<Value = SystemQueue> {
    prop_oneof![
        Just(SystemQueue::Journal),
        Just(SystemQueue::DeadLetter),
        Just(SystemQueue::DeadXact),
    ]
}

fn queue_path() -> impl Strategy<Value = QueuePath> {
    prop_oneof![
        (queue_name(), suffix()).prop_map(|(name, suffix)| QueuePath::Public { name, suffix }),
        (queue_name(), suffix()).prop_map(|(name, suffix)| QueuePath::Private { name, suffix }),
        system_queue().prop_map(QueuePath::System),
    ]
}

fn direct_address() -> impl Strategy<Value = DirectAddress> {
    let ipx = (any::<u32>(), 0..=IpxAddress::NODE_MAX)
        .prop_filter_map("ipx", |(n, h)| IpxAddress::new(n, h));
    prop_oneof![
        any::<IpAddr>().prop_map(DirectAddress::Tcp),
        host_name().prop_map(DirectAddress::Os),
        ipx.clone().prop_map(DirectAddress::Ipx),
        ipx.prop_map(DirectAddress::Spx),
        (host_name(), any::<Option<u16>>())
            .prop_map(|(host, port)| DirectAddress::Http { host, port }),
        (host_name(), any::<Option<u16>>())
            .prop_map(|(host, port)| DirectAddress::Https { host, port }),
    ]
}

fn single() -> impl Strategy<Value = FormatName> {
    let domain = proptest::option::of(
        proptest::collection::vec(ascii_except(","), 1..=255).prop_filter_map("domain", |v| {
            lior::wire::format_name::DomainName::new(&v.into_iter().collect::<String>()).ok()
        }),
    );
    let multicast = (224u8..=239, any::<[u8; 3]>(), any::<u16>())
        .prop_filter_map("multicast", |(a, [b, c, d], port)| {
            MulticastAddress::new(Ipv4Addr::new(a, b, c, d), port)
        });
    prop_oneof![
        3 => (direct_address(), queue_path())
            .prop_map(|(address, queue)| FormatName::Direct(DirectName { address, queue })),
        1 => (guid(), any::<bool>()).prop_map(|(queue, journal)| FormatName::Public { queue, journal }),
        1 => (guid(), any::<u32>(), any::<bool>())
            .prop_map(|(qm, id, journal)| FormatName::Private { qm, id, journal }),
        1 => (guid(), system_queue()).prop_map(|(qm, queue)| FormatName::Machine { qm, queue }),
        1 => (guid(), any::<bool>()).prop_map(|(id, xact_only)| FormatName::Connector { id, xact_only }),
        1 => (guid(), domain).prop_map(|(id, domain)| FormatName::DistributionList { id, domain }),
        1 => multicast.prop_map(FormatName::Multicast),
    ]
}

/// The kinds a multiple-element name may hold (MS-MQMQ 2.1.7), generated directly so that
/// few cases are thrown away.
fn sendable() -> impl Strategy<Value = FormatName> {
    let queue = prop_oneof![
        queue_name().prop_map(|name| QueuePath::Public {
            name,
            suffix: QueueSuffix::None
        }),
        queue_name().prop_map(|name| QueuePath::Private {
            name,
            suffix: QueueSuffix::None
        }),
    ];
    prop_oneof![
        (direct_address(), queue)
            .prop_map(|(address, queue)| FormatName::Direct(DirectName { address, queue })),
        guid().prop_map(|queue| FormatName::Public {
            queue,
            journal: false
        }),
        (guid(), any::<u32>()).prop_map(|(qm, id)| FormatName::Private {
            qm,
            id,
            journal: false
        }),
        single().prop_filter("sendable", |f| !f.is_read_only()
            && f.as_direct().is_none_or(|d| d.queue.subqueue().is_none())),
    ]
}

fn format_name() -> impl Strategy<Value = FormatName> {
    prop_oneof![
        3 => single(),
        1 => proptest::collection::vec(sendable(), 2..6).prop_filter_map("multiple", |v| {
            MultipleElements::new(v).ok().map(FormatName::Multiple)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_parses_back(f in format_name()) {
        let text = f.to_string();
        let back = FormatName::parse(&text);
        prop_assert_eq!(back.as_ref(), Ok(&f), "{}", text);
        // Keyword case never matters: the lowercase spelling names the same queue.
        if text.is_ascii() {
            let lower = FormatName::parse(&text.to_ascii_lowercase()).unwrap();
            prop_assert!(lower.eq_ignore_case(&f));
            prop_assert_eq!(lower.normalized_key(), f.normalized_key());
        }
    }

    #[test]
    fn direct_wire_round_trip(address in direct_address(), queue in queue_path()) {
        let d = DirectName { address, queue };
        let f = FormatName::Direct(d.clone());
        let bytes = f.direct_wire_string().unwrap();
        let ctx = WireContext { source_qm: Guid::NULL, destination_qm: Guid::NULL, admin: None };
        let mut scratch = Vec::new();
        let q = f.to_queue_ref(QueueRole::Destination, &ctx, &mut scratch).unwrap();
        prop_assert_eq!(q, QueueRef::Direct(Utf16(&bytes)));
        let back = FormatName::from_queue_ref(&q, Guid::NULL, Guid::NULL, None).unwrap();
        prop_assert_eq!(back, f);
    }

    #[test]
    fn private_wire_round_trip(qm in guid(), id in any::<u32>(), src in guid(), dst in guid()) {
        let f = FormatName::Private { qm, id, journal: false };
        let ctx = WireContext { source_qm: src, destination_qm: dst, admin: None };
        let mut scratch = Vec::new();
        for role in [QueueRole::Admin, QueueRole::Response] {
            let q = f.to_queue_ref(role, &ctx, &mut scratch).unwrap();
            prop_assert_eq!(FormatName::from_queue_ref(&q, src, dst, None).unwrap(), f.clone());
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = FormatName::parse(&s);
        let _ = DirectName::parse_wire(&s);
    }

    #[test]
    fn grammar_shaped_text_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("DIRECT="), Just("PUBLIC="), Just("PRIVATE="), Just("MACHINE="),
                Just("DL="), Just("CONNECTOR="), Just("MULTICAST="), Just("TCP:"), Just("OS:"),
                Just("HTTP://"), Just("HTTPS://"), Just("IPX:"), Just("/msmq"), Just("\\"),
                Just("/"), Just(";"), Just(","), Just("PRIVATE$"), Just("SYSTEM$;"), Just(":"),
                Just("@"), Just("["), Just("]"), Just(G), Just("{"), Just("}"), Just("JOURNAL"),
                Just("é"), Just("1"), Just("224.0.0.1"), Just("q"), Just(""),
            ],
            0..20,
        )
    ) {
        let s: String = parts.concat();
        if let Ok(f) = FormatName::parse(&s) {
            // Whatever parses prints back to something that parses to the same value.
            prop_assert_eq!(FormatName::parse(&f.to_string()), Ok(f));
        }
    }

    #[test]
    fn arbitrary_wire_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = DirectName::from_utf16(Utf16(&bytes));
        let _ = FormatName::from_queue_ref(&QueueRef::Direct(Utf16(&bytes)), Guid::NULL, Guid::NULL, None);
    }
}
