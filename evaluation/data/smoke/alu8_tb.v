// Testbench for the smoke item "alu8" (written for this project).
`timescale 1ns/1ps
module tb;
  reg  [7:0] a, b;
  reg  [2:0] op;
  wire [7:0] y;
  wire       zero;
  reg  [7:0] want;
  integer errors = 0;
  integer i, k;
  alu8 dut (.a(a), .b(b), .op(op), .y(y), .zero(zero));
  initial begin
    for (i = 0; i < 24; i = i + 1) begin
      a = (i * 37 + 11) & 8'hff;
      b = (i * 91 + 5) & 8'hff;
      if (i == 3) begin a = 8'h5a; b = 8'h5a; end    // SUB and XOR give zero
      for (k = 0; k < 8; k = k + 1) begin
        op = k[2:0];
        #1;
        case (op)
          3'd0: want = a + b;
          3'd1: want = a - b;
          3'd2: want = a & b;
          3'd3: want = a | b;
          3'd4: want = a ^ b;
          3'd5: want = ~a;
          3'd6: want = a << 1;
          default: want = a >> 1;
        endcase
        if (y !== want || zero !== (want == 8'd0)) errors = errors + 1;
      end
    end
    if (errors == 0) $display("TEST PASSED"); else $display("TEST FAILED: %0d errors", errors);
    $finish;
  end
endmodule
