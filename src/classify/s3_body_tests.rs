use super::*;

/// `K`eeps, `W`eakens, `M`alformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V {
    K,
    W,
    M,
}

fn kind(v: ConfigVerdict) -> V {
    match v {
        ConfigVerdict::Keeps => V::K,
        ConfigVerdict::Weakens(_) => V::W,
        ConfigVerdict::Malformed(_) => V::M,
    }
}

fn doc(rules: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{rules}</LifecycleConfiguration>"#
    )
}

/// An enabled rule with `filter` (a `<Filter>` or a legacy `<Prefix>`) and `actions`.
fn rule(filter: &str, actions: &str) -> String {
    format!("<Rule><ID>r</ID>{filter}<Status>Enabled</Status>{actions}</Rule>")
}

const ALL: &str = "<Filter><Prefix></Prefix></Filter>";
const EXP30: &str = "<Expiration><Days>30</Days></Expiration>";
const NC30: &str = "<NoncurrentVersionExpiration><NoncurrentDays>30</NoncurrentDays></NoncurrentVersionExpiration>";

/// What botocore sends for `{"Rules": [{"ID": …, "Status": "Enabled", "Filter": {"Prefix": ""},
/// "Expiration": {"Days": 30}, "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}]}`.
fn covering() -> String {
    rule(ALL, &format!("{EXP30}{NC30}"))
}

#[test]
fn a_lifecycle_is_kept_only_when_every_object_expires_within_the_retention() {
    use V::*;
    let with_rules = |rules: &[&str]| doc(&rules.concat());
    let filtered_long = rule(
        "<Filter><Prefix>keep/</Prefix></Filter>",
        "<Expiration><Days>3650</Days></Expiration>",
    );
    let cases: Vec<(&str, String, u32, V)> = vec![
        ("one rule, both expirations", doc(&covering()), 90, K),
        ("exactly the retention", doc(&covering()), 30, K),
        ("longer than the retention", doc(&covering()), 29, W),
        (
            "legacy empty Prefix, no Filter",
            doc(&rule("<Prefix></Prefix>", &format!("{EXP30}{NC30}"))),
            90,
            K,
        ),
        (
            "no filter at all",
            doc(&rule("", &format!("{EXP30}{NC30}"))),
            90,
            K,
        ),
        (
            "empty Filter element",
            doc(&rule("<Filter/>", &format!("{EXP30}{NC30}"))),
            90,
            K,
        ),
        (
            "empty Prefix element in the Filter",
            doc(&rule("<Filter><Prefix/></Filter>", &format!("{EXP30}{NC30}"))),
            90,
            K,
        ),
        (
            "current and noncurrent in two unfiltered rules",
            with_rules(&[&rule(ALL, EXP30), &rule("<Filter/>", NC30)]),
            90,
            K,
        ),
        (
            "a filtered rule in addition, longer and disabled",
            with_rules(&[
                &covering(),
                &filtered_long,
                &filtered_long.replace("Enabled", "Disabled"),
            ]),
            90,
            K,
        ),
        (
            "transitions and an upload clean-up in addition",
            doc(&rule(
                ALL,
                &format!("{EXP30}<Transition><Days>5</Days><StorageClass>GLACIER</StorageClass></Transition><Transition><Days>10</Days><StorageClass>DEEP_ARCHIVE</StorageClass></Transition>{NC30}<AbortIncompleteMultipartUpload><DaysAfterInitiation>7</DaysAfterInitiation></AbortIncompleteMultipartUpload>"),
            )),
            90,
            K,
        ),
        ("no rules", doc(""), 90, W),
        (
            "only a filtered rule",
            doc(&rule(
                "<Filter><Prefix>tmp/</Prefix></Filter>",
                &format!("{EXP30}{NC30}"),
            )),
            90,
            W,
        ),
        (
            "legacy non-empty Prefix",
            doc(&rule("<Prefix>tmp/</Prefix>", &format!("{EXP30}{NC30}"))),
            90,
            W,
        ),
        (
            "a prefix of one space is a prefix",
            doc(&rule(
                "<Filter><Prefix> </Prefix></Filter>",
                &format!("{EXP30}{NC30}"),
            )),
            90,
            W,
        ),
        (
            "a tag filter",
            doc(&rule(
                "<Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter>",
                &format!("{EXP30}{NC30}"),
            )),
            90,
            W,
        ),
        (
            "a size filter",
            doc(&rule(
                "<Filter><ObjectSizeGreaterThan>0</ObjectSizeGreaterThan></Filter>",
                &format!("{EXP30}{NC30}"),
            )),
            90,
            W,
        ),
        (
            "an And of an empty prefix and a size",
            doc(&rule(
                "<Filter><And><Prefix></Prefix><ObjectSizeLessThan>10</ObjectSizeLessThan></And></Filter>",
                &format!("{EXP30}{NC30}"),
            )),
            90,
            W,
        ),
        ("disabled", doc(&covering().replace("Enabled", "Disabled")), 90, W),
        ("status in another case", doc(&covering().replace("Enabled", "enabled")), 90, W),
        ("status with a space", doc(&covering().replace(">Enabled<", "> Enabled<")), 90, W),
        ("no status", doc(&covering().replace("<Status>Enabled</Status>", "")), 90, W),
        (
            "expiration by date",
            doc(&rule(
                ALL,
                &format!("<Expiration><Date>2030-01-01T00:00:00Z</Date></Expiration>{NC30}"),
            )),
            90,
            W,
        ),
        (
            "a delete-marker clean-up is not an expiration",
            doc(&rule(
                ALL,
                &format!("<Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>{NC30}"),
            )),
            90,
            W,
        ),
        ("no noncurrent expiration", doc(&rule(ALL, EXP30)), 90, W),
        ("no current expiration", doc(&rule(ALL, NC30)), 90, W),
        (
            "noncurrent versions kept longer",
            doc(&rule(ALL, &format!("{EXP30}{}", NC30.replace("30", "365")))),
            90,
            W,
        ),
        (
            "newer noncurrent versions kept however old",
            doc(&rule(
                ALL,
                &format!("{EXP30}<NoncurrentVersionExpiration><NoncurrentDays>30</NoncurrentDays><NewerNoncurrentVersions>5</NewerNoncurrentVersions></NoncurrentVersionExpiration>"),
            )),
            90,
            W,
        ),
        (
            "the noncurrent expiration only in a filtered rule",
            with_rules(&[
                &rule(ALL, EXP30),
                &rule("<Filter><Prefix>a</Prefix></Filter>", NC30),
            ]),
            90,
            W,
        ),
        (
            "a huge number of days",
            doc(&covering().replace("<Days>30<", "<Days>999999999<")),
            90,
            W,
        ),
    ];
    for (name, body, retention, want) in cases {
        let got = lifecycle_keeps_retention(body.as_bytes(), retention);
        assert_eq!(kind(got), want, "{name}: {got:?}\n{body}");
    }
}

#[test]
fn hostile_lifecycle_xml_is_malformed() {
    let good = doc(&covering());
    assert_eq!(
        lifecycle_keeps_retention(good.as_bytes(), 90),
        ConfigVerdict::Keeps
    );
    let swap = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replacen(from, to, 1)
    };
    let cases: Vec<(&str, String)> = vec![
        ("unclosed", "<LifecycleConfiguration><Rule>".to_owned()),
        ("not XML", "not xml <".to_owned()),
        ("empty", String::new()),
        ("another root", "<VersioningConfiguration/>".to_owned()),
        ("two roots", format!("{good}<LifecycleConfiguration/>")),
        (
            "a DTD with an entity",
            format!("<!DOCTYPE x [<!ENTITY d \"30\">]>{}", swap("<Days>30<", "<Days>&d;<")),
        ),
        ("a character reference", swap("<Days>30<", "<Days>&#51;0<")),
        ("a predefined entity", swap("<Days>30<", "<Days>3&amp;0<")),
        ("a comment splitting Days", swap("<Days>30<", "<Days>3<!-- -->0<")),
        ("a comment splitting Status", swap(">Enabled<", ">Ena<!-- -->bled<")),
        ("a comment anywhere", swap("<Rule>", "<!-- note --><Rule>")),
        ("CDATA for Days", swap("<Days>30<", "<Days><![CDATA[30]]><")),
        ("CDATA splitting Days", swap("<Days>30<", "<Days>3<![CDATA[0]]><")),
        ("a processing instruction", swap("<Rule>", "<?x y?><Rule>")),
        ("two Days", swap("<Days>30</Days>", "<Days>30</Days><Days>3650</Days>")),
        ("two Expirations", swap(EXP30, &format!("{EXP30}<Expiration><Days>3650</Days></Expiration>"))),
        ("two Statuses", swap("<Status>Enabled</Status>", "<Status>Enabled</Status><Status>Disabled</Status>")),
        ("two Filters", swap(ALL, &format!("{ALL}<Filter><Prefix>x/</Prefix></Filter>"))),
        ("a Prefix and a Filter", swap(ALL, &format!("<Prefix>x/</Prefix>{ALL}"))),
        ("two conditions outside And", swap(ALL, "<Filter><Prefix></Prefix><ObjectSizeGreaterThan>1</ObjectSizeGreaterThan></Filter>")),
        ("an empty And", swap(ALL, "<Filter><And></And></Filter>")),
        ("an empty And element", swap(ALL, "<Filter><And/></Filter>")),
        ("a prefixed element", swap("<Days>30</Days>", "<s3:Days xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">30</s3:Days>")),
        ("a prefixed root", good.replace("LifecycleConfiguration xmlns=", "s3:LifecycleConfiguration xmlns:s3=").replace("</LifecycleConfiguration>", "</s3:LifecycleConfiguration>")),
        ("another default namespace inside", swap("<Days>", "<Days xmlns=\"urn:other\">")),
        ("another namespace on the root", good.replace("http://s3.amazonaws.com/doc/2006-03-01/", "urn:other")),
        ("an attribute", swap("<Status>", "<Status value=\"Disabled\">")),
        ("an unknown element", swap("<Status>", "<Enabled>true</Enabled><Status>")),
        ("an element in the wrong place", swap("<Days>30</Days>", "<Days>30</Days><NoncurrentDays>1</NoncurrentDays>")),
        ("a child in a text element", swap("<Days>30</Days>", "<Days><Days>30</Days></Days>")),
        ("text beside elements", swap("<Rule>", "<Rule>30")),
        ("Days zero", swap("<Days>30<", "<Days>0<")),
        ("Days negative", swap("<Days>30<", "<Days>-1<")),
        ("Days with a sign", swap("<Days>30<", "<Days>+30<")),
        ("Days with spaces", swap("<Days>30<", "<Days> 30 <")),
        ("Days fractional", swap("<Days>30<", "<Days>30.0<")),
        ("Days hexadecimal", swap("<Days>30<", "<Days>0x1e<")),
        ("Days empty", swap("<Days>30<", "<Days><")),
        ("Days beyond u32", swap("<Days>30<", "<Days>99999999999999999999<")),
        ("NoncurrentDays zero", swap("<NoncurrentDays>30<", "<NoncurrentDays>0<")),
        ("no NoncurrentDays", swap("<NoncurrentDays>30</NoncurrentDays>", "")),
        ("Days and Date", swap("<Days>30</Days>", "<Days>30</Days><Date>2030-01-01T00:00:00Z</Date>")),
        ("Days and a delete-marker clean-up", swap("<Days>30</Days>", "<Days>30</Days><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker>")),
        ("an empty Expiration", swap(EXP30, "<Expiration/>")),
        ("a declaration after the root", format!("{good}<?xml version=\"1.0\"?>")),
        ("nested too deep for the schema", swap("<ID>r</ID>", "<ID><a><b>r</b></a></ID>")),
    ];
    for (name, body) in cases {
        let got = lifecycle_keeps_retention(body.as_bytes(), 90);
        assert_eq!(kind(got), V::M, "{name}: {got:?}\n{body}");
    }
    // Indentation is not content.
    let pretty = good
        .replace("<Rule>", "\n  <Rule>\n    ")
        .replace("</Rule>", "\n  </Rule>\n");
    assert_eq!(
        lifecycle_keeps_retention(pretty.as_bytes(), 90),
        ConfigVerdict::Keeps
    );
    // More elements than any real configuration: refused before it is all held.
    let many = doc(&covering().repeat(MAX_ELEMENTS / 8));
    assert_eq!(kind(lifecycle_keeps_retention(many.as_bytes(), 90)), V::M);
}

#[test]
fn versioning_may_not_be_suspended_nor_read_two_ways() {
    use V::*;
    let doc = |inner: &str| {
        format!(
            r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{inner}</VersioningConfiguration>"#
        )
    };
    for (name, body, want) in [
        ("enabled", doc("<Status>Enabled</Status>"), K),
        (
            "with MFA delete",
            doc("<Status>Enabled</Status><MfaDelete>Disabled</MfaDelete>"),
            K,
        ),
        ("suspended", doc("<Status>Suspended</Status>"), W),
        ("no status", "<VersioningConfiguration/>".to_owned(), M),
        ("unknown status", doc("<Status>Off</Status>"), M),
        (
            "two statuses",
            doc("<Status>Suspended</Status><Status>Enabled</Status>"),
            M,
        ),
        (
            "a comment splitting it",
            doc("<Status>Ena<!-- -->bled</Status>"),
            M,
        ),
        ("CDATA", doc("<Status><![CDATA[Enabled]]></Status>"), M),
        (
            "a prefixed element",
            doc("<v:Status xmlns:v=\"urn:x\">Enabled</v:Status>"),
            M,
        ),
        (
            "a nested status",
            doc("<Other><Status>Enabled</Status></Other>"),
            M,
        ),
    ] {
        let got = versioning_keeps(body.as_bytes());
        assert_eq!(kind(got), want, "{name}: {got:?}");
    }
}

fn delete(objects: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{objects}</Delete>")
}

#[test]
fn delete_objects_keys_are_read_as_s3_reads_them() {
    let ok = |body: &str| delete_keys(body.as_bytes());
    assert_eq!(
        ok(&delete(
            "<Object><Key>landing/a.csv</Key></Object>\n  <Object><Key>landing/b &amp; c.csv</Key><VersionId>3</VersionId></Object><Quiet>true</Quiet>"
        )),
        Ok(vec!["landing/a.csv".to_owned(), "landing/b & c.csv".to_owned()])
    );
    // Character references are resolved; spaces are part of a key.
    assert_eq!(
        ok(&delete(
            "<Object><Key> landing/&#x41;&#66;&lt;</Key></Object>"
        )),
        Ok(vec![" landing/AB<".to_owned()])
    );
    let thousand = "<Object><Key>landing/k</Key></Object>".repeat(1000);
    assert_eq!(ok(&delete(&thousand)).map(|k| k.len()), Ok(1000));
}

#[test]
fn hostile_delete_bodies_are_refused() {
    for (name, body) in [
        (
            "a comment splitting a key (S3 joins: pii/customers.csv)",
            delete("<Object><Key>landing/../pii<!---->/customers.csv</Key></Object>"),
        ),
        (
            "CDATA",
            delete("<Object><Key><![CDATA[pii/customers.csv]]></Key></Object>"),
        ),
        (
            "a DTD with an entity",
            "<!DOCTYPE Delete [<!ENTITY k \"pii/customers.csv\">]><Delete><Object><Key>&k;</Key></Object></Delete>".to_owned(),
        ),
        (
            "an undefined entity",
            delete("<Object><Key>&k;</Key></Object>"),
        ),
        (
            "a processing instruction",
            delete("<Object><Key>landing/<?x y?>a</Key></Object>"),
        ),
        (
            "two keys in one object (first or last wins)",
            delete("<Object><Key>landing/a</Key><Key>pii/customers.csv</Key></Object>"),
        ),
        (
            "a key in an unknown element",
            delete("<Object><Key>landing/a</Key></Object><Extra><Object><Key>pii/x</Key></Object></Extra>"),
        ),
        (
            "a prefixed key (another namespace)",
            delete("<Object><x:Key xmlns:x=\"urn:x\">pii/x</x:Key></Object>"),
        ),
        (
            "a foreign namespace on the root",
            "<Delete xmlns=\"urn:other\"><Object><Key>pii/x</Key></Object></Delete>".to_owned(),
        ),
        ("an attribute", delete("<Object id=\"1\"><Key>pii/x</Key></Object>")),
        ("an object without a key", delete("<Object><VersionId>1</VersionId></Object>")),
        ("an empty key", delete("<Object><Key></Key></Object>")),
        ("no object", delete("")),
        (
            "more than 1000 objects",
            delete(&"<Object><Key>landing/k</Key></Object>".repeat(1001)),
        ),
        ("a raw CR", delete("<Object><Key>landing/a\r\nb</Key></Object>")),
        ("a control character", delete("<Object><Key>landing/&#x1;</Key></Object>")),
        ("text beside objects", delete("pii/x<Object><Key>landing/a</Key></Object>")),
        ("another root", "<Remove><Object><Key>x</Key></Object></Remove>".to_owned()),
        ("two roots", format!("{}{}", delete("<Object><Key>a</Key></Object>"), delete("<Object><Key>b</Key></Object>"))),
        ("unclosed", "<Delete><Object><Key>a</Key></Object>".to_owned()),
        ("a raw NUL", "<Delete><Object><Key>\u{0}</Key></Object></Delete>".to_owned()),
    ] {
        assert!(delete_keys(body.as_bytes()).is_err(), "{name}");
    }
    assert!(delete_keys(b"<Delete><Object><Key>\xff</Key></Object></Delete>").is_err());
}
