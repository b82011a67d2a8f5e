// Testbench for the smoke item "fix_syntax" (written for this project).
`timescale 1ns/1ps
module tb;
  reg  [3:0] a, b;
  reg        sel;
  wire [3:0] y;
  integer errors = 0;
  integer i;
  mux2 dut (.a(a), .b(b), .sel(sel), .y(y));
  initial begin
    for (i = 0; i < 32; i = i + 1) begin
      a = i[3:0]; b = ~i[3:0]; sel = i[4];
      #1;
      if (y !== (sel ? b : a)) errors = errors + 1;
    end
    if (errors == 0) $display("TEST PASSED"); else $display("TEST FAILED: %0d errors", errors);
    $finish;
  end
endmodule
