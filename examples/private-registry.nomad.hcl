# An image from a private registry. The credentials are given to tart only for
# the clone, through Tart's TART_REGISTRY_* variables; nothing is stored on the
# host. Keep them in Nomad variables, never in the job file.
job "tart-private-image" {
  datacenters = ["dc1"]

  group "vms" {
    task "vm" {
      driver = "tart"

      template {
        data        = <<EOH
REGISTRY_TOKEN={{ with nomadVar "nomad/jobs/tart-private-image" }}{{ .token }}{{ end }}
EOH
        destination = "secrets/registry.env"
        env         = true
      }

      config {
        url          = "registry.example.com/ci/macos-xcode:16"
        ssh_user     = "admin"
        ssh_password = "admin"

        auth {
          username = "ci-bot"
          password = "${REGISTRY_TOKEN}"
        }
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
