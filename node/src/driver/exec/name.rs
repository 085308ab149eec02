//! How messages name a plugin: by its script when the command runs an interpreter
//! (`python3 examples/qemu_plugin.py` is `examples/qemu_plugin.py`), else by its program.

/// Interpreters whose first argument that is not a flag is the plugin's script.
const INTERPRETERS: [&str; 11] = [
    "python", "python3", "python2", "sh", "bash", "dash", "zsh", "perl", "ruby", "node", "env",
];

/// The name of the plugin run by `command` (program, then arguments).
pub(crate) fn plugin_name(command: &[String]) -> String {
    let Some((program, args)) = command.split_first() else {
        return String::new();
    };
    let base = program.rsplit('/').next().unwrap_or(program);
    // `python3.12` is `python3`.
    let base = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let interpreted = INTERPRETERS
        .iter()
        .any(|i| i.trim_end_matches(|c: char| c.is_ascii_digit()) == base);
    if !interpreted {
        return program.clone();
    }
    // `env` also takes `NAME=value` and then the interpreter itself.
    let script = args
        .iter()
        .filter(|a| !a.starts_with('-') && !a.contains('='))
        .find(|a| {
            let b = a.rsplit('/').next().unwrap_or(a);
            let b = b.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
            !(base == "env" && INTERPRETERS.contains(&b))
        });
    script.cloned().unwrap_or_else(|| program.clone())
}

#[cfg(test)]
mod tests {
    use super::plugin_name;

    fn name(cmd: &[&str]) -> String {
        plugin_name(&cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn an_interpreted_plugin_is_named_by_its_script() {
        let example = "examples/qemu_plugin.py";
        assert_eq!(name(&["python3", example, "--state-dir", "/x"]), example);
        assert_eq!(name(&["/usr/bin/python3.12", "-u", example]), example);
        assert_eq!(name(&["sh", "-e", "/p/plugin.sh"]), "/p/plugin.sh");
        assert_eq!(name(&["env", "A=1", "perl", "-w", "p.pl"]), "p.pl");
        assert_eq!(name(&["/opt/plugin", "--flag"]), "/opt/plugin");
        assert_eq!(name(&["python3"]), "python3");
    }
}
