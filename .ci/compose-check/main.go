// Command compose-check validates Compose files as Docker Compose v2 reads them, with compose-go
// (github.com/compose-spec/compose-go/v2), the library `docker compose` itself loads files with:
// the Compose specification's schema, variable interpolation, and the model's consistency (depends_on,
// volumes, networks). It needs no Docker engine; CI runs it on docker-compose.yml.
//
//	go run ./.ci/compose-check docker-compose.yml
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE...")
		os.Exit(2)
	}
	files := os.Args[1:]
	if err := check(files); err != nil {
		fmt.Fprintf(os.Stderr, "compose: %s is not valid: %v\n", strings.Join(files, ", "), err)
		os.Exit(1)
	}
}

func check(files []string) error {
	options, err := cli.NewProjectOptions(files, cli.WithOsEnv, cli.WithName("compose-check"))
	if err != nil {
		return err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return err
	}
	fmt.Printf("compose: %s is valid (services: %s)\n", strings.Join(files, ", "),
		strings.Join(project.ServiceNames(), ", "))
	return nil
}
