//! The source password never sits in the config file and never shows in
//! what pgfanout prints: a `password` in the TOML is refused with the way to
//! give it instead, and a password given through the environment or
//! `password_file` does not appear in `check`'s output or logs. The same for
//! a Redis sink's password, which comes from `PGFANOUT_SINK_<NAME>__PASSWORD`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{create_database, free_port, fresh_redis_db, redis_config, wait_until};

const SECRET: &str = "s3cr3t-never-printed";

/// `pgfanout check` on `config` with extra environment variables: (exit code, stdout + stderr).
fn check(name: &str, config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("pgfanout-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgfanout"));
    command.args(["--log-format", "json", "check", "--config"]).arg(&path).env("PGFANOUT_LOG", "debug");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("cannot run pgfanout");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn password_in_the_config_file_is_refused() {
    let db = create_database("e2e_secrets_file").await;
    let redis_url = fresh_redis_db(15).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.items", "item:{id}")]).replacen(
        "[source]\n",
        &format!("[source]\npassword = \"{SECRET}\"\n"),
        1,
    );
    let (code, output) = check("in_file", &config, &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("source.password") && output.contains("PGFANOUT_SOURCE__PASSWORD"),
        "the refusal names the key and the way to give it:\n{output}"
    );
    assert!(!output.contains(SECRET), "the refused password was printed:\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn password_from_environment_or_file_is_never_printed() {
    let db = create_database("e2e_secrets_env").await;
    db.client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").await.unwrap();
    let redis_url = fresh_redis_db(15).await;
    let http = format!("127.0.0.1:{}", free_port());
    let config = redis_config(&db, &redis_url, &http, &[("public.items", "item:{id}")]);

    let (code, output) = check("from_env", &config, &[("PGFANOUT_SOURCE__PASSWORD", SECRET)]);
    assert_eq!(code, Some(0), "check with the password from the environment:\n{output}");
    assert!(!output.contains(SECRET), "the password was printed:\n{output}");

    let secret_file = std::env::temp_dir().join(format!("pgfanout-secrets-{}.password", std::process::id()));
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let with_file =
        config.replacen("[source]\n", &format!("[source]\npassword_file = \"{}\"\n", secret_file.display()), 1);
    let (code, output) = check("from_file", &with_file, &[]);
    std::fs::remove_file(&secret_file).unwrap();
    assert_eq!(code, Some(0), "check with password_file:\n{output}");
    assert!(!output.contains(SECRET), "the password was printed:\n{output}");
}

/// A `redis-server` that demands a password, stopped on drop.
struct PasswordRedis {
    child: Child,
    port: u16,
}

impl PasswordRedis {
    async fn start(password: &str) -> PasswordRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--requirepass", password])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        wait_until("the password-protected redis answers", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        PasswordRedis { child, port }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_password_comes_from_the_environment_only() {
    let db = create_database("e2e_secrets_redis").await;
    db.client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)").await.unwrap();
    let redis = PasswordRedis::start(SECRET).await;
    let http = format!("127.0.0.1:{}", free_port());
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let config = redis_config(&db, &url, &http, &[("public.items", "item:{id}")]);
    let variable = "PGFANOUT_SINK_E2E_SECRETS_REDIS__PASSWORD";

    // From the environment: the sink authenticates, nothing prints it.
    let (code, output) = check("redis_env", &config, &[(variable, SECRET)]);
    assert_eq!(code, Some(0), "check with the Redis password from {variable}:\n{output}");
    assert!(!output.contains(SECRET), "the Redis password was printed:\n{output}");

    // Without it the store refuses, and says so.
    let (code, output) = check("redis_none", &config, &[]);
    assert_eq!(code, Some(1), "check passed without the Redis password:\n{output}");
    assert!(output.contains("problem: sink e2e_secrets_redis"), "{output}");

    // A wrong one is not printed either.
    let wrong = "wrong-password-never-printed";
    let (code, output) = check("redis_wrong", &config, &[(variable, wrong)]);
    assert_eq!(code, Some(1), "check passed with a wrong Redis password:\n{output}");
    assert!(!output.contains(wrong), "the wrong Redis password was printed:\n{output}");

    // Written in the file's URL: refused, naming the variable to use.
    let in_file = config.replace(&url, &format!("redis://:{SECRET}@127.0.0.1:{}/0", redis.port));
    let (code, output) = check("redis_in_file", &in_file, &[]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("the url carries a password") && output.contains(variable), "{output}");
    assert!(!output.contains(SECRET), "the refused password was printed:\n{output}");
}
