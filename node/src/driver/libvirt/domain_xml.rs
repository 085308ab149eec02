//! A libvirt domain's XML, as far as ballast needs it: name, UUID, memory, vCPUs, disks
//! (which file, which format, whether it is copied) and ballast's metadata element that
//! marks a domain as managed; and the XML of a new domain made from a [`VmSpec`].

use ballast_store::{VmId, VmSpec};
use std::path::PathBuf;

/// ballast's XML namespace for its `<metadata>` element.
pub(crate) const METADATA_NS: &str = "https://ballast.invalid/xmlns/libvirt/1";
/// The namespace prefix libvirt writes for it.
pub(crate) const METADATA_KEY: &str = "ballast";

/// The metadata element that marks a domain as managed by ballast under id `vm`.
pub(crate) fn metadata_element(vm: &VmId) -> String {
    format!("<vm id=\"{}\"/>", escape(vm.as_str()))
}

/// One disk of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Disk {
    /// The guest device (`vda`): the name libvirt's `migrate_disks` takes.
    pub target: String,
    /// The image file (`<source file=…>`), for file disks.
    pub file: Option<PathBuf>,
    /// The image format (`<driver type=…>`), `raw` when not given.
    pub format: String,
    /// `type` attribute: `file`, `block`, `network`, `volume`...
    pub kind: String,
    /// Read-only media (a CD-ROM): never copied; must exist on the destination.
    pub readonly: bool,
}

/// What ballast reads from a domain's XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DomainDesc {
    /// The domain's name.
    pub name: String,
    /// Its UUID.
    pub uuid: String,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Its disks.
    pub disks: Vec<Disk>,
    /// The VM id in ballast's metadata element, when the domain is managed.
    pub managed_as: Option<VmId>,
}

/// Why a domain's XML could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum XmlError {
    /// Not well-formed XML.
    #[error("domain XML does not parse: {0}")]
    Parse(#[from] roxmltree::Error),
    /// A required element is missing or malformed.
    #[error("domain XML: {0}")]
    Missing(&'static str),
}

/// Parses a domain's XML (`virDomainGetXMLDesc`).
pub(crate) fn parse(xml: &str) -> Result<DomainDesc, XmlError> {
    let doc = roxmltree::Document::parse(xml)?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(XmlError::Missing("no <domain> root"));
    }
    let child_text = |name: &str| {
        root.children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::trim)
    };
    let name = child_text("name").ok_or(XmlError::Missing("no <name>"))?;
    let uuid = child_text("uuid").unwrap_or_default();
    let memory_mib = root
        .children()
        .find(|n| n.has_tag_name("memory"))
        .and_then(|n| {
            let v: u64 = n.text()?.trim().parse().ok()?;
            Some(to_mib(v, n.attribute("unit").unwrap_or("KiB")))
        })
        .unwrap_or(0);
    let vcpus = child_text("vcpu").and_then(|t| t.parse().ok()).unwrap_or(1);
    let mut disks = Vec::new();
    if let Some(devices) = root.children().find(|n| n.has_tag_name("devices")) {
        for d in devices.children().filter(|n| n.has_tag_name("disk")) {
            let target = d
                .children()
                .find(|n| n.has_tag_name("target"))
                .and_then(|n| n.attribute("dev"));
            let Some(target) = target else { continue };
            let source = d.children().find(|n| n.has_tag_name("source"));
            let file = source
                .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
                .map(PathBuf::from);
            let format = d
                .children()
                .find(|n| n.has_tag_name("driver"))
                .and_then(|n| n.attribute("type"))
                .unwrap_or("raw");
            let readonly = d.attribute("device") == Some("cdrom")
                || d.children().any(|n| n.has_tag_name("readonly"));
            disks.push(Disk {
                target: target.to_owned(),
                file,
                format: format.to_owned(),
                kind: d.attribute("type").unwrap_or("file").to_owned(),
                readonly,
            });
        }
    }
    let managed_as = root
        .children()
        .find(|n| n.has_tag_name("metadata"))
        .and_then(|m| {
            m.children()
                .find(|n| n.tag_name().namespace() == Some(METADATA_NS))
        })
        .and_then(|n| n.attribute("id"))
        .map(VmId::from);
    Ok(DomainDesc {
        name: name.to_owned(),
        uuid: uuid.to_owned(),
        memory_mib,
        vcpus,
        disks,
        managed_as,
    })
}

fn to_mib(v: u64, unit: &str) -> u64 {
    match unit {
        "b" | "bytes" => v / (1024 * 1024),
        "KB" => v.saturating_mul(1000) / (1024 * 1024),
        "k" | "KiB" => v / 1024,
        "MB" => v.saturating_mul(1_000_000) / (1024 * 1024),
        "G" | "GiB" => v.saturating_mul(1024),
        "GB" => v.saturating_mul(1_000_000_000) / (1024 * 1024),
        _ => v, // "M", "MiB"
    }
}

/// XML text/attribute escaping.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The XML of a new domain for `vm` from `spec`: its name is the VM id, memory and
/// vCPUs from the spec, one virtio disk per `spec.disks` entry (format from the file
/// name: `.qcow2` → qcow2, else raw), a serial console, no network; `kvm` picks the
/// domain type. A spec with `driver_opts["libvirt.xml"]` uses that XML as given.
pub(crate) fn from_spec(vm: &VmId, spec: &VmSpec, kvm: bool) -> String {
    if let Some(xml) = spec.driver_opts.get("libvirt.xml") {
        return xml.clone();
    }
    let mut disks = String::new();
    for (i, path) in spec.disks.iter().enumerate() {
        let dev = format!("vd{}", char::from(b'a' + u8::try_from(i % 26).unwrap_or(0)));
        let format = if path.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        disks.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
             <source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
            escape(path)
        ));
    }
    // One baseline CPU model whatever the host: a VM that balancing moves must run on
    // every host it may go to (the host's own CPU, `host-passthrough`, migrates only
    // between identical hosts, and fails outright under some nested KVM). An operator
    // who wants more gives the domain's XML (`--xml`).
    let kind = if kvm { "kvm" } else { "qemu" };
    let cpu = "<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model></cpu>";
    format!(
        "<domain type='{kind}'><name>{}</name><memory unit='MiB'>{}</memory><vcpu>{}</vcpu>\
         <os><type arch='x86_64'>hvm</type></os>{cpu}\
         <devices>{disks}<serial type='pty'/><console type='pty'/></devices></domain>",
        escape(vm.as_str()),
        spec.memory_mib.max(16),
        spec.vcpus.max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu' id='3'>
  <name>web-1</name>
  <uuid>0b5f9a3c-0000-4000-8000-000000000001</uuid>
  <metadata>
    <ballast:vm xmlns:ballast="https://ballast.invalid/xmlns/libvirt/1" id="web-1"/>
  </metadata>
  <memory unit='KiB'>65536</memory>
  <vcpu placement='static'>2</vcpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web-1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/srv/iso/seed.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>"#;

    #[test]
    fn reads_name_memory_disks_and_metadata() {
        let d = parse(XML).unwrap();
        assert_eq!(d.name, "web-1");
        assert_eq!(d.memory_mib, 64);
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.managed_as, Some(VmId::from("web-1")));
        assert_eq!(d.disks.len(), 3);
        assert_eq!(d.disks[0].format, "qcow2");
        assert_eq!(
            d.disks[0].file.as_deref(),
            Some(std::path::Path::new("/var/lib/libvirt/images/web-1.qcow2"))
        );
        assert!(!d.disks[0].readonly && d.disks[1].readonly);
        assert_eq!(d.disks[2].kind, "network");
        assert_eq!(d.disks[2].file, None);
    }

    #[test]
    fn unmanaged_and_bad_xml() {
        let plain = XML.replace("ballast.invalid", "example.org");
        assert_eq!(parse(&plain).unwrap().managed_as, None);
        assert!(parse("<domain>").is_err());
        assert!(parse("<network><name>x</name></network>").is_err());
        assert!(parse("<domain></domain>").is_err());
    }

    #[test]
    fn spec_xml_parses_back() {
        let spec = VmSpec {
            vcpus: 1,
            memory_mib: 64,
            disks: vec!["/tmp/a b&c.qcow2".into()],
            ..VmSpec::default()
        };
        let xml = from_spec(&VmId::from("v<1>"), &spec, false);
        let d = parse(&xml).unwrap();
        assert_eq!(d.name, "v<1>");
        assert_eq!(d.memory_mib, 64);
        assert_eq!(d.disks[0].format, "qcow2");
        assert_eq!(
            d.disks[0].file.as_deref(),
            Some(std::path::Path::new("/tmp/a b&c.qcow2"))
        );
    }
}
