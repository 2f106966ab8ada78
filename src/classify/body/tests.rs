use super::*;

fn statement(body: &str) -> BodyVerdict {
    inspect(BodyCheck::SqlStatement, body.as_bytes())
}

fn command(body: &str) -> BodyVerdict {
    inspect(BodyCheck::Command, body.as_bytes())
}

fn is_denied(verdict: BodyVerdict, want: Action) -> bool {
    matches!(verdict, BodyVerdict::Denied { action, .. } if action == want)
}

#[test]
fn no_check_is_always_clean() {
    assert_eq!(
        inspect(BodyCheck::None, b"\xff not even json"),
        BodyVerdict::Clean
    );
}

#[test]
fn statement_bodies() {
    let denied = [
        r#"{"statement":"SELECT 1","warehouse_id":"w","disposition":"EXTERNAL_LINKS"}"#,
        r#"{"disposition":"external_links"}"#,
        r#"{"DISPOSITION":"External_Links"}"#,
        r#"{"disposition":" EXTERNAL_LINKS "}"#,
        r#"{"disposition":"INLINE","disposition":"EXTERNAL_LINKS"}"#,
        r#"{"disposition":"EXTERNAL_LINKS","disposition":"INLINE"}"#,
        r#"{"disp\u006fsition":"EXTERNAL\u005fLINKS"}"#,
        "{\"di\u{017F}position\":\"EXTERNAL_LINKS\"}",
        r#"  {"format":"ARROW_STREAM", "disposition" : "EXTERNAL_LINKS"}  "#,
        r#"{"disposition":"INLINE_OR_EXTERNAL_LINKS"}"#,
        r#"{"disposition":""}"#,
    ];
    for body in denied {
        assert!(
            is_denied(statement(body), SQL_EXTERNAL_LINKS),
            "{body} should be denied"
        );
    }
    let clean = [
        r#"{"statement":"SELECT 1","warehouse_id":"w"}"#,
        r#"{"statement":"SELECT 'EXTERNAL_LINKS'","disposition":"INLINE"}"#,
        r#"{"disposition":null}"#,
        r#"{"disposition":"inline"}"#,
        r#"{"disposition":"INLINE","Disposition":"Inline"}"#,
        r#"{"nested":{"disposition":"EXTERNAL_LINKS"}}"#,
        r#"{}"#,
    ];
    for body in clean {
        assert_eq!(statement(body), BodyVerdict::Clean, "{body}");
    }
    let malformed = [
        "",
        "[]",
        r#""disposition""#,
        r#"{"disposition":"EXTERNAL_LINKS""#,
        r#"{"disposition":["EXTERNAL_LINKS"]}"#,
        r#"{"disposition":1}"#,
        r#"{"a":1} {"disposition":"EXTERNAL_LINKS"}"#,
        "disposition=EXTERNAL_LINKS",
        "\u{FEFF}{}",
    ];
    for body in malformed {
        assert!(
            matches!(statement(body), BodyVerdict::Malformed(_)),
            "{body:?} should be malformed"
        );
    }
}

#[test]
fn deep_nesting_neither_crashes_nor_hides_the_disposition() {
    let deep = |inner: &str| format!("{}{inner}{}", "[".repeat(10_000), "]".repeat(10_000));
    let beside = format!(r#"{{"x":{},"disposition":"EXTERNAL_LINKS"}}"#, deep("1"));
    assert!(is_denied(statement(&beside), SQL_EXTERNAL_LINKS));
    let inside = format!(r#"{{"disposition":{}}}"#, deep(r#""EXTERNAL_LINKS""#));
    assert!(matches!(statement(&inside), BodyVerdict::Malformed(_)));
}

#[test]
fn command_texts_that_reach_dbfs() {
    let texts = [
        "dbutils.fs.ls('/')",
        "display(dbutils.fs.head('dbfs:/tmp/x'))",
        "DBUTILS.FS.ls('/')",
        "dbutils . fs . ls('/')",
        "x = (dbutils\n    .fs\n    .head('/x'))",
        "dbutils.\\\nfs.ls('/')",
        "getattr(dbutils, \"fs\").ls('/')",
        "getattr( dbutils , 'fs' ).head('/x')",
        "dbutils.__getattribute__('fs').ls('/')",
        "vars(dbutils)['fs'].ls('/')",
        "u = dbutils\nu.fs.ls('/')",
        "%fs ls /",
        "%FS head /tmp/x",
        "print(1)\n   %fs ls /",
        "print(1)\r%fs ls",
        "%fs",
        "%%fs ls",
        "get_ipython().run_line_magic('fs', 'ls /')",
        "\u{FF44}\u{FF42}\u{FF55}\u{FF54}\u{FF49}\u{FF4C}\u{FF53}.\u{FF46}\u{FF53}.ls('/')",
        "\u{1D41D}\u{1D41B}\u{1D42E}\u{1D42D}\u{1D422}\u{1D425}\u{1D42C}.fs.ls('/')",
        "dbutil\u{017F}.fs.ls('/')",
        "dbutils.fs.ls(\"/\") // scala",
    ];
    for text in texts {
        assert!(command_uses_fs(text), "{text:?} should be caught");
    }
}

#[test]
fn command_texts_that_do_not() {
    let texts = [
        "print(1)",
        "spark.read.table('main.s.t').count()",
        "dbutils.widgets.get('x')",
        "dbutils.secrets.get('s', 'k')",
        "x = 5 % fs",
        "print('%fs is a magic')",
        "fs = 1\nprint(fs)",
        "%fsck",
        "%sql SELECT 1",
    ];
    for text in texts {
        assert!(!command_uses_fs(text), "{text:?} should pass");
    }
}

#[test]
fn command_bodies() {
    let denied = [
        r#"{"clusterId":"c","contextId":"x","language":"python","command":"dbutils.fs.ls('/')"}"#,
        r#"{"command":"print(1)","command":"%fs ls /"}"#,
        r#"{"command":"%fs ls /","command":"print(1)"}"#,
        r#"{"Command":"dbutils\u002efs.ls('/')"}"#,
        "language=python&clusterId=c&contextId=x&command=dbutils.fs.ls%28%27%2F%27%29",
        "command=%25fs+ls+%2F",
        "command=print(1)&command=dbutils.fs.ls('/')",
        r#"{"command":"print(1)","x":"&command=dbutils.fs.ls('/')"}"#,
    ];
    for body in denied {
        assert!(
            is_denied(command(body), COMMAND_FS),
            "{body} should be denied"
        );
    }
    let clean = [
        r#"{"clusterId":"c","contextId":"x","language":"python","command":"print(1)"}"#,
        "language=python&command=print%281%29",
    ];
    for body in clean {
        assert_eq!(command(body), BodyVerdict::Clean, "{body}");
    }
    let malformed = [
        "",
        r#"{"command":"dbutils.fs.ls('/')""#,
        r#"{"command":["dbutils.fs.ls('/')"]}"#,
        r#"{"language":"python"}"#,
        "language=python",
        r#"{"command":null}"#,
    ];
    for body in malformed {
        assert!(
            matches!(command(body), BodyVerdict::Malformed(_)),
            "{body:?} should be malformed"
        );
    }
}
